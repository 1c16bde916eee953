import Foundation
import XCTest

@testable import VoxwireClient

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The two hand-written parsers, fed the way the network splits bytes.
final class ParserTests: XCTestCase {
    func testSSEParserHandlesIdsCommentsRetryAndSplitLines() {
        var parser = SSEParser()
        let wire = "retry: 1000\n\nid: 1\ndata: {\"type\":\"a\"}\n\n: ping\n\nid: 2\r\ndata: x\r\ndata: y\r\n\r\n"
        var messages: [SSEMessage] = []
        for byte in Data(wire.utf8) {  // one byte per read: every split point
            messages += parser.feed(Data([byte]))
        }
        XCTAssertEqual(messages.map(\.data), ["{\"type\":\"a\"}", "x\ny"])
        XCTAssertEqual(messages.map(\.id), ["1", "2"])
        XCTAssertEqual(parser.lastEventID, "2")
        XCTAssertEqual(parser.retryMilliseconds, 1000)
    }

    func testSSEParserJoinsUTF8SplitAcrossReads() {
        var parser = SSEParser()
        let bytes = Data("data: café\n\n".utf8)
        let cut = bytes.firstIndex(of: 0xC3)! + 1  // inside the two-byte é
        XCTAssertEqual(parser.feed(bytes[..<cut]), [])
        XCTAssertEqual(parser.feed(bytes[cut...]).map(\.data), ["café"])
    }

    func testEventDecoding() throws {
        let message = SSEMessage(
            id: "7", event: nil,
            data: #"{"type":"conversation.item.input_audio_transcription.completed","transcript":"hi"}"#)
        let event = try XCTUnwrap(VoxwireEvent(message))
        XCTAssertEqual(event.id, 7)
        XCTAssertEqual(event.transcript, "hi")
    }

    func testGAReplyEventsDecode() throws {
        let spoken = try XCTUnwrap(
            VoxwireEvent(
                SSEMessage(
                    id: "8", event: nil,
                    data: #"{"type":"response.output_audio_transcript.delta","response_id":"resp_1","item_id":"item_2","output_index":0,"content_index":0,"delta":"Hel"}"#
                )))
        XCTAssertEqual(spoken.type, "response.output_audio_transcript.delta")
        XCTAssertEqual(spoken.delta, "Hel")
        XCTAssertEqual(spoken.responseID, "resp_1")
        XCTAssertEqual(spoken.itemID, "item_2")
        let written = try XCTUnwrap(
            VoxwireEvent(
                SSEMessage(
                    id: "9", event: nil,
                    data: #"{"type":"response.output_text.done","response_id":"resp_1","item_id":"item_2","text":"Hello."}"#)))
        XCTAssertEqual(written.text, "Hello.")
        XCTAssertNil(written.transcript)
    }

    /// The error object carries the `event_id` of the client event it refused (or null).
    func testErrorEventsAndBodiesCarryTheEventID() throws {
        let event = try XCTUnwrap(
            VoxwireEvent(
                SSEMessage(
                    id: nil, event: nil,
                    data: #"{"type":"error","event_id":"event_12","error":{"type":"invalid_request_error","code":"conversation_already_has_active_response","message":"busy","param":null,"event_id":"evt_client_3"}}"#
                )))
        let error = try XCTUnwrap(event.error)
        XCTAssertEqual(error.code, "conversation_already_has_active_response")
        XCTAssertEqual(error.type, "invalid_request_error")
        XCTAssertEqual(error.eventID, "evt_client_3")
        XCTAssertNil(error.param)
        XCTAssertEqual(error.status, 0)
        XCTAssertTrue(error.description.hasSuffix("(event evt_client_3)"), error.description)

        let url = try XCTUnwrap(URL(string: "http://127.0.0.1/api/sessions/s/events"))
        let response = try XCTUnwrap(HTTPURLResponse(url: url, statusCode: 409, httpVersion: "HTTP/1.1", headerFields: [:]))
        let body = Data(
            #"{"type":"error","error":{"type":"invalid_request_error","code":"conversation_already_has_active_response","message":"busy","param":null,"event_id":"evt_9"}}"#
                .utf8)
        let decoded = VoxwireError(response: response, body: body)
        XCTAssertEqual(decoded.status, 409)
        XCTAssertEqual(decoded.eventID, "evt_9")
        let unnamed = Data(#"{"type":"error","error":{"code":"sequence_gap","message":"m","param":"X-Sequence","event_id":null}}"#.utf8)
        XCTAssertNil(VoxwireError(response: response, body: unnamed).eventID)
        XCTAssertEqual(VoxwireError(response: response, body: unnamed).param, "X-Sequence")
    }

    func testWAVDecoderReadsTheRateAndCarriesOddBytes() throws {
        var header = [UInt8]("RIFF".utf8) + [0xFF, 0xFF, 0xFF, 0xFF] + [UInt8]("WAVEfmt ".utf8)
        header += [16, 0, 0, 0, 1, 0, 1, 0]  // fmt size, PCM, mono
        header += [0xC0, 0x5D, 0, 0, 0x80, 0xBB, 0, 0, 2, 0, 16, 0]  // 24000 Hz, 48000 B/s, 2, 16
        header += [UInt8]("data".utf8) + [0xFF, 0xFF, 0xFF, 0xFF]
        let pcm: [UInt8] = [0x01, 0x00, 0xFF, 0xFF, 0x00, 0x80]  // 1, -1, -32768
        var decoder = WAVStreamDecoder()
        var samples: [Int16] = []
        for piece in [header.prefix(30), header.dropFirst(30) + pcm.prefix(3), pcm.dropFirst(3)] {
            samples += try decoder.feed(Data(piece))
        }
        XCTAssertEqual(decoder.sampleRate, 24000)
        XCTAssertEqual(samples, [1, -1, -32768])
    }

    func testChunkSizeIs100msAt16kHz() {
        XCTAssertEqual(16000 * AudioUploader.chunkMilliseconds / 1000 * 2, 3200)
    }
}
