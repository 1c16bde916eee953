import XCTest

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

@testable import VoxwireClient

/// The audio stream's resume: the request, the response headers, the timeline.
final class ResumeTests: XCTestCase {
    private let endpoint = Endpoint(
        baseURL: URL(string: "http://127.0.0.1:8000")!,
        urls: SessionURLs(
            session: "/api/sessions/s", uploadAudio: "/api/sessions/s/upload_audio",
            streamAudio: "/api/sessions/s/stream_audio", stopStream: "/api/sessions/s/stop_stream",
            events: "/api/sessions/s/events"),
        token: "t")

    func testStreamAudioResumesWithFromMsAndTheSameHeaders() {
        let fresh = Requests.streamAudio(endpoint, fromMs: nil)
        let resumed = Requests.streamAudio(endpoint, fromMs: 1050)
        XCTAssertEqual(fresh.url?.absoluteString, "http://127.0.0.1:8000/api/sessions/s/stream_audio")
        XCTAssertEqual(
            resumed.url?.absoluteString, "http://127.0.0.1:8000/api/sessions/s/stream_audio?from_ms=1050")
        XCTAssertEqual(resumed.httpMethod, "GET")
        XCTAssertEqual(resumed.allHTTPHeaderFields, fresh.allHTTPHeaderFields)
    }

    func testStreamStartFromHeaders() throws {
        let url = URL(string: "http://127.0.0.1:8000/api/sessions/s/stream_audio")!
        let headers = [
            "X-Stream-Position-Ms": "1040", "X-Stream-Padding-Bytes": "0", "X-Stream-Resumed": "true",
        ]
        let response = try XCTUnwrap(
            HTTPURLResponse(url: url, statusCode: 200, httpVersion: "HTTP/1.1", headerFields: headers))
        XCTAssertEqual(StreamStart(response), StreamStart(positionMs: 1040, paddingBytes: 0, resumed: true))
        let bare = try XCTUnwrap(
            HTTPURLResponse(url: url, statusCode: 200, httpVersion: "HTTP/1.1", headerFields: [:]))
        XCTAssertNil(StreamStart(bare))  // no position: nothing to resume from
    }

    func testTimelineDeliversPaddingAndDropsTheReplayedOverlap() throws {
        var timeline = AudioTimeline()
        XCTAssertNil(timeline.receivedMs)
        // A live start at 1000 ms (24 kHz) with 10 ms of padding: delivered, not on the timeline.
        try timeline.begin(StreamStart(positionMs: 1000, paddingBytes: 480, resumed: false), sampleRate: 24000)
        XCTAssertEqual(timeline.feed([Int16](repeating: 0, count: 240 + 1212)).count, 1452)
        XCTAssertEqual(timeline.receivedMs, 1050)  // 1212 samples: 50.5 ms after 1000
        XCTAssertNil(timeline.takeGap())
        // Resumed from the frame holding 1050 ms, 1040 ms: its first 10.5 ms (252) repeat.
        try timeline.begin(StreamStart(positionMs: 1040, paddingBytes: 0, resumed: true), sampleRate: 24000)
        let replay = (0..<300).map { Int16($0) }
        XCTAssertEqual(timeline.feed(Array(replay.prefix(100))), [])
        XCTAssertEqual(timeline.feed(Array(replay.dropFirst(100))), Array(replay[252...]))
        XCTAssertNil(timeline.takeGap())
        XCTAssertEqual(timeline.receivedSamples, 24000 + 1212 + 48)
    }

    func testTimelineReportsAGapWhenTheServerCouldNotResume() throws {
        var timeline = AudioTimeline()
        try timeline.begin(StreamStart(positionMs: 2000, paddingBytes: 0, resumed: false), sampleRate: 16000)
        _ = timeline.feed([Int16](repeating: 1, count: 1600))  // 100 ms
        XCTAssertEqual(timeline.receivedMs, 2100)
        try timeline.begin(StreamStart(positionMs: 6000, paddingBytes: 3200, resumed: false), sampleRate: 16000)
        XCTAssertEqual(timeline.feed([Int16](repeating: 0, count: 1600 + 160)).count, 1760)
        let gap = try XCTUnwrap(timeline.takeGap())
        XCTAssertEqual(gap, AudioGap(fromMs: 2100, toMs: 6000))
        XCTAssertEqual(gap.missingMs, 3900)
        XCTAssertNil(timeline.takeGap())  // reported once
        XCTAssertEqual(timeline.receivedMs, 6010)
        XCTAssertThrowsError(
            try timeline.begin(StreamStart(positionMs: 6000, paddingBytes: 0, resumed: true), sampleRate: 24000))
    }

    func testBackoffIsFullJitterUnderACap() {
        for attempt in 1...12 {
            let cap = min(5, 0.25 * pow(2, Double(attempt - 1)))
            let delay = AudioStreamReconnect.delay(attempt: attempt)
            XCTAssertTrue((0...cap).contains(delay), "\(attempt): \(delay)")
        }
        XCTAssertTrue(AudioStreamReconnect.isTransient(URLError(.networkConnectionLost)))
        XCTAssertFalse(AudioStreamReconnect.isTransient(URLError(.cancelled)))
        XCTAssertFalse(AudioStreamReconnect.retryableStatuses.contains(404))
    }
}
