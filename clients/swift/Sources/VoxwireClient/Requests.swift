import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Where one session's requests go, and the bearer token they carry.
struct Endpoint: Sendable {
    let baseURL: URL
    let urls: SessionURLs
    let token: String

    /// A server-given path (`/api/sessions/…`) resolved against the base URL.
    func url(_ path: String) -> URL {
        URL(string: path, relativeTo: baseURL)?.absoluteURL ?? baseURL.appendingPathComponent(path)
    }
}

/// Every HTTP request the client makes is built here, and only here.
///
/// The voxwire repository's `tests/test_swift_replay.py` replays these requests byte for
/// byte against a real server, and reads this file to check that they are still what it
/// replays: each `static func` is one request; its method (`httpMethod`), its path (a
/// literal, or the `urls` member it uses) and the header names and literal values it sets
/// with `setValue(_:forHTTPHeaderField:)`. So keep one `static func` per request, and put a
/// header that is only sometimes sent on a line of its own beginning with `if let`.
///
/// URLSession adds the rest: `Host`, `Accept: */*` (unless set here), `User-Agent`,
/// `Accept-Language`, `Accept-Encoding: gzip, deflate, br`, `Connection: keep-alive` and
/// `Content-Length` for bodies (see README.md).
enum Requests {
    /// `POST /api/sessions` with the session config as JSON; answered 201 with the session.
    static func createSession(baseURL: URL, apiKey: String?, config: Data) -> URLRequest {
        var request = URLRequest(url: baseURL.appendingPathComponent("api/sessions"))
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        if let apiKey { request.setValue("Bearer \(apiKey)", forHTTPHeaderField: "Authorization") }
        request.httpBody = config
        return request
    }

    /// `POST upload_audio`: one chunk of PCM16 LE at the session's input rate. The body is
    /// passed to `uploadTask(with:from:)`, so URLSession sends it with a `Content-Length`.
    static func uploadAudio(_ endpoint: Endpoint, sequence: Int) -> URLRequest {
        var request = URLRequest(url: endpoint.url(endpoint.urls.uploadAudio))
        request.httpMethod = "POST"
        request.setValue("application/octet-stream", forHTTPHeaderField: "Content-Type")
        request.setValue("Bearer \(endpoint.token)", forHTTPHeaderField: "Authorization")
        request.setValue(String(sequence), forHTTPHeaderField: "X-Sequence")
        return request
    }

    /// `GET events`: the Server-Sent Events stream, resumed after `lastEventID` if given.
    static func events(_ endpoint: Endpoint, lastEventID: Int?) -> URLRequest {
        var request = URLRequest(url: endpoint.url(endpoint.urls.events))
        request.httpMethod = "GET"
        request.setValue("Bearer \(endpoint.token)", forHTTPHeaderField: "Authorization")
        request.setValue("text/event-stream", forHTTPHeaderField: "Accept")
        request.setValue("no-cache", forHTTPHeaderField: "Cache-Control")
        if let lastEventID { request.setValue(String(lastEventID), forHTTPHeaderField: "Last-Event-ID") }
        return request
    }

    /// `GET stream_audio`: the endless chunked WAV of the assistant's voice. After a drop it
    /// is resumed with `?from_ms=<the timeline position received>` (the headers stay the same).
    static func streamAudio(_ endpoint: Endpoint, fromMs: Int?) -> URLRequest {
        var url = endpoint.url(endpoint.urls.streamAudio)
        if let fromMs, var components = URLComponents(url: url, resolvingAgainstBaseURL: true) {
            let resume = [URLQueryItem(name: "from_ms", value: "\(fromMs)")]
            components.queryItems = (components.queryItems ?? []) + resume
            url = components.url ?? url
        }
        var request = URLRequest(url: url)
        request.httpMethod = "GET"
        request.setValue("Bearer \(endpoint.token)", forHTTPHeaderField: "Authorization")
        request.setValue("audio/wav", forHTTPHeaderField: "Accept")
        return request
    }

    /// `POST events`: client events (a JSON array); answered `{"accepted": n}`.
    static func clientEvents(_ endpoint: Endpoint, body: Data) -> URLRequest {
        var request = URLRequest(url: endpoint.url(endpoint.urls.events))
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        request.setValue("Bearer \(endpoint.token)", forHTTPHeaderField: "Authorization")
        request.httpBody = body
        return request
    }

    /// `DELETE` the session: 204; the server ends the open streams cleanly.
    static func deleteSession(_ endpoint: Endpoint) -> URLRequest {
        var request = URLRequest(url: endpoint.url(endpoint.urls.session))
        request.httpMethod = "DELETE"
        request.setValue("Bearer \(endpoint.token)", forHTTPHeaderField: "Authorization")
        return request
    }
}

/// Status checks shared by the request/response calls.
enum HTTP {
    /// The response as HTTP, if its status is `expected`; else the server's error.
    static func checked(_ response: URLResponse, body: Data, expected: Int) throws -> HTTPURLResponse {
        guard let http = response as? HTTPURLResponse else {
            throw VoxwireClientError.invalidResponse("not an HTTP response")
        }
        guard http.statusCode == expected else {
            throw VoxwireError(response: http, body: body)
        }
        return http
    }
}

/// The requests `tests/test_swift_replay.py` does not replay (yet): it checks that
/// ``Requests`` holds exactly the six it replays, so these live apart. The Swift
/// integration tests (`Tests/VoxwireIntegrationTests`) send them to the real server.
enum UnreplayedRequests {
    /// `POST stop_stream`: ends the open `stream_audio` response cleanly; answered
    /// `{"stopped": true}`, or `false` when none was open.
    static func stopStream(_ endpoint: Endpoint) -> URLRequest {
        var request = URLRequest(url: endpoint.url(endpoint.urls.stopStream))
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        request.setValue("Bearer \(endpoint.token)", forHTTPHeaderField: "Authorization")
        return request
    }

    /// `POST upload_audio` as one long body, sent as the audio arrives: started with
    /// `uploadTask(withStreamedRequest:)`, whose body stream URLSession sends chunked
    /// (no `Content-Length`, no `X-Sequence`: a live body cannot be resent).
    static func uploadAudioStream(_ endpoint: Endpoint, contentType: String) -> URLRequest {
        var request = URLRequest(url: endpoint.url(endpoint.urls.uploadAudio))
        request.httpMethod = "POST"
        request.setValue(contentType, forHTTPHeaderField: "Content-Type")
        request.setValue("Bearer \(endpoint.token)", forHTTPHeaderField: "Authorization")
        return request
    }
}
