import XCTest

@testable import VoxwireClient

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
