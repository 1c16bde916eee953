import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// One server event from `events`: its `type` and all of its JSON fields.
///
/// The types are OpenAI Realtime's GA names (`response.output_audio_transcript.delta`,
/// `conversation.item.added`, ...); a session asked for with `OpenAI-Beta: realtime=v1` gets
/// the beta ones (`response.audio_transcript.delta`, `conversation.item.created`, ...).
///
/// ```swift
/// for try await event in session.events() {
///     switch event.type {
///     case "conversation.item.input_audio_transcription.completed": print(event.transcript ?? "")
///     case "response.output_audio_transcript.delta", "response.output_text.delta":
///         print(event.delta ?? "", terminator: "")
///     default: break
///     }
/// }
/// ```
public struct VoxwireEvent: Sendable, Equatable {
    /// The SSE `id` (the server's event number; `nil` for the unnumbered `error` frames).
    public let id: Int?
    /// The event type, e.g. `input_audio_buffer.speech_started`.
    public let type: String
    /// Every field of the event, `type` and `event_id` included.
    public let fields: [String: JSONValue]

    /// A field of the event.
    public subscript(key: String) -> JSONValue? { fields[key] }

    /// `transcript` of `…input_audio_transcription.completed` and
    /// `response.output_audio_transcript.done`.
    public var transcript: String? { fields["transcript"]?.stringValue }
    /// `text` of `response.output_text.done` (a reply in text only).
    public var text: String? { fields["text"]?.stringValue }
    /// `delta` of the `….delta` events (partial transcripts, the reply's text).
    public var delta: String? { fields["delta"]?.stringValue }
    /// `item_id`: ties the events of one user turn or one reply together.
    public var itemID: String? { fields["item_id"]?.stringValue }
    /// `response_id` of the events of one response (its deltas, `output_audio_buffer.*`).
    public var responseID: String? { fields["response_id"]?.stringValue }
    /// `response.status` of `response.done`: `completed`, `cancelled` or `failed`.
    public var responseStatus: String? { fields["response"]?["status"]?.stringValue }

    /// The error an `error` event reports (status 0).
    public var error: VoxwireError? {
        guard type == "error", let error = fields["error"] else { return nil }
        return VoxwireError(
            status: 0, code: error["code"]?.stringValue ?? "error",
            message: error["message"]?.stringValue ?? "", param: error["param"]?.stringValue,
            type: error["type"]?.stringValue, eventID: error["event_id"]?.stringValue)
    }

    public init(id: Int?, type: String, fields: [String: JSONValue]) {
        self.id = id
        self.type = type
        self.fields = fields
    }

    /// The event in an SSE message, if its `data` is a JSON object with a string `type`.
    init?(_ message: SSEMessage) {
        guard let json = try? JSONDecoder().decode(JSONValue.self, from: Data(message.data.utf8)),
            let fields = json.objectValue, let type = fields["type"]?.stringValue
        else { return nil }
        self.init(id: message.id.flatMap(Int.init), type: type, fields: fields)
    }
}

/// One dispatched Server-Sent Event.
public struct SSEMessage: Sendable, Equatable {
    /// The last event ID in force when it was dispatched (an `id:` field, or an earlier one).
    public var id: String?
    /// The `event:` field (voxwire sends none: everything is a `message`).
    public var event: String?
    /// The `data:` lines, joined with newlines.
    public var data: String
}

/// A Server-Sent Events parser (the WHATWG event-stream format), fed raw bytes.
///
/// Foundation has no EventSource, so this is the small part of it voxwire needs: lines end in
/// LF, CRLF or CR (also when a read splits CR from LF); a blank line dispatches; `data`
/// accumulates; `id` sets the last event ID (kept across events, for `Last-Event-ID`); `retry`
/// sets the reconnection delay; lines starting with `:` are comments (`: ping`); unknown
/// fields are ignored; a UTF-8 sequence split across reads is joined before decoding.
public struct SSEParser: Sendable {
    /// The last `id:` seen, sent back as `Last-Event-ID` when reconnecting.
    public private(set) var lastEventID: String?
    /// The last `retry:` seen, in milliseconds.
    public private(set) var retryMilliseconds: Int?

    private var line: [UInt8] = []
    private var afterCR = false
    private var dataLines: [String]?
    private var eventType: String?

    public init(lastEventID: String? = nil) {
        self.lastEventID = lastEventID
    }

    /// Feeds received bytes; returns the messages they complete.
    public mutating func feed(_ bytes: Data) -> [SSEMessage] {
        var messages: [SSEMessage] = []
        for byte in bytes {
            if afterCR {
                afterCR = false
                if byte == UInt8(ascii: "\n") { continue }  // the LF of a CRLF
            }
            switch byte {
            case UInt8(ascii: "\r"):
                afterCR = true
                if let message = endLine() { messages.append(message) }
            case UInt8(ascii: "\n"):
                if let message = endLine() { messages.append(message) }
            default:
                line.append(byte)
            }
        }
        return messages
    }

    private mutating func endLine() -> SSEMessage? {
        let text = String(decoding: line, as: UTF8.self)
        line.removeAll(keepingCapacity: true)
        if text.isEmpty { return dispatch() }
        if text.hasPrefix(":") { return nil }  // a comment
        var field = Substring(text)
        var value = Substring("")
        if let colon = text.firstIndex(of: ":") {
            field = text[..<colon]
            value = text[text.index(after: colon)...]
            if value.hasPrefix(" ") { value = value.dropFirst() }
        }
        switch field {
        case "data":
            dataLines = (dataLines ?? []) + [String(value)]
        case "id":
            if !value.contains("\0") { lastEventID = String(value) }
        case "retry":
            if !value.isEmpty, value.allSatisfy({ $0.isASCII && $0.isNumber }) {
                retryMilliseconds = Int(value)
            }
        case "event":
            eventType = String(value)
        default:
            break
        }
        return nil
    }

    private mutating func dispatch() -> SSEMessage? {
        defer {
            self.dataLines = nil
            self.eventType = nil
        }
        guard let dataLines else { return nil }
        return SSEMessage(id: lastEventID, event: eventType, data: dataLines.joined(separator: "\n"))
    }
}

/// Feeds one `events` response into an `AsyncThrowingStream` of events, and reports how it
/// ended (and the last event ID) so the session can reconnect.
final class EventsReceiver: StreamingReceiver {
    /// How a connection ended: cleanly (the session is gone), with an HTTP error (final), or
    /// with a network error (reconnect after `retryMilliseconds`, sending `lastEventID`).
    struct Outcome: Sendable {
        var error: Error?
        var isHTTPError: Bool
        var lastEventID: Int?
        var retryMilliseconds: Int?
    }

    private let continuation: AsyncThrowingStream<VoxwireEvent, Error>.Continuation
    private let done: @Sendable (Outcome) -> Void
    private var parser: SSEParser
    private var errorResponse: HTTPURLResponse?
    private var errorBody = Data()

    init(
        lastEventID: Int?, continuation: AsyncThrowingStream<VoxwireEvent, Error>.Continuation,
        done: @escaping @Sendable (Outcome) -> Void
    ) {
        self.parser = SSEParser(lastEventID: lastEventID.map(String.init))
        self.continuation = continuation
        self.done = done
    }

    func receive(response: HTTPURLResponse) {
        if response.statusCode != 200 { errorResponse = response }
    }

    func receive(data: Data) {
        guard errorResponse == nil else {
            errorBody.append(data)
            return
        }
        for message in parser.feed(data) {
            if let event = VoxwireEvent(message) { continuation.yield(event) }
        }
    }

    func complete(error: Error?) {
        var outcome = Outcome(
            error: error, isHTTPError: false, lastEventID: parser.lastEventID.flatMap(Int.init),
            retryMilliseconds: parser.retryMilliseconds)
        if let errorResponse {
            outcome.error = VoxwireError(response: errorResponse, body: errorBody)
            outcome.isHTTPError = true
        }
        done(outcome)
    }
}
