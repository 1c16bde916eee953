import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Receives one streaming response (`stream_audio` or `events`) piece by piece.
///
/// Called on the URLSession's delegate queue, which is serial, so one receiver never sees
/// two calls at once.
protocol StreamingReceiver: AnyObject {
    /// The response head arrived.
    func receive(response: HTTPURLResponse)
    /// Body bytes arrived, split wherever the network split them.
    func receive(data: Data)
    /// The response ended: cleanly (`nil`: the server sent the final chunk) or not.
    func complete(error: Error?)
}

/// The session delegate: hands each long-running data task's callbacks to its receiver.
///
/// One URLSession (one connection pool) serves every request of a client; request/response
/// calls (`data(for:)`, the uploads' completion handlers) bypass this delegate, and only the
/// two streaming GETs and streamed uploads are registered here.
final class DataTaskRouter: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    private let lock = NSLock()
    private var receivers: [Int: StreamingReceiver] = [:]
    private var bodies: [Int: BodySource] = [:]

    /// Starts `request` as a data task whose response goes to `receiver`.
    func start(_ request: URLRequest, on session: URLSession, receiver: StreamingReceiver)
        -> URLSessionDataTask
    {
        let task = session.dataTask(with: request)
        lock.lock()
        receivers[task.taskIdentifier] = receiver
        lock.unlock()
        task.resume()
        return task
    }

    /// Starts `request` as an upload task whose body is read from `body` as it is written
    /// (URLSession asks for it with `needNewBodyStream`), its response going to `receiver`.
    func startUpload(
        _ request: URLRequest, body: StreamedBody, on session: URLSession, receiver: StreamingReceiver
    ) -> URLSessionUploadTask {
        let task = session.uploadTask(withStreamedRequest: request)
        lock.lock()
        receivers[task.taskIdentifier] = receiver
        bodies[task.taskIdentifier] = body
        lock.unlock()
        task.resume()
        return task
    }

    #if canImport(FoundationNetworking)
        /// Linux: starts `request` as a data task whose body is `data`, sent as a stream that
        /// can be handed out again if libcurl resends the request (see `voxwireUpload`).
        func startUpload(
            _ request: URLRequest, replaying data: Data, on session: URLSession,
            receiver: StreamingReceiver
        ) -> URLSessionDataTask {
            var request = request
            request.httpBodyStream = InputStream(data: data)
            let task = session.dataTask(with: request)
            lock.lock()
            receivers[task.taskIdentifier] = receiver
            bodies[task.taskIdentifier] = ReplayableBody(data)
            lock.unlock()
            task.resume()
            return task
        }
    #endif

    private func receiver(for task: URLSessionTask, remove: Bool = false) -> StreamingReceiver? {
        lock.lock()
        defer { lock.unlock() }
        if remove { bodies.removeValue(forKey: task.taskIdentifier) }
        return remove
            ? receivers.removeValue(forKey: task.taskIdentifier)
            : receivers[task.taskIdentifier]
    }

    func urlSession(
        _ session: URLSession, task: URLSessionTask,
        needNewBodyStream completionHandler: @escaping @Sendable (InputStream?) -> Void
    ) {
        lock.lock()
        let body = bodies[task.taskIdentifier]
        lock.unlock()
        completionHandler(body?.takeInputStream())  // nil for a task without one: fails it
    }

    func urlSession(
        _ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
        completionHandler: @escaping (URLSession.ResponseDisposition) -> Void
    ) {
        // swift-corelibs-foundation hands over interim responses too (`100 Continue`, after
        // libcurl's `Expect: 100-continue` on a streamed upload), then the final one; Apple's
        // URLSession never does. Only the final response is the response.
        if let receiver = receiver(for: dataTask), let http = response as? HTTPURLResponse,
            http.statusCode >= 200
        {
            receiver.receive(response: http)
        }
        completionHandler(.allow)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        receiver(for: dataTask)?.receive(data: data)
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
        receiver(for: task, remove: true)?.complete(error: error)
    }

    /// Never cache these responses (the configuration has no cache either; this is belt and
    /// braces for a configuration passed in by the app).
    func urlSession(
        _ session: URLSession, dataTask: URLSessionDataTask,
        willCacheResponse proposedResponse: CachedURLResponse,
        completionHandler: @escaping (CachedURLResponse?) -> Void
    ) {
        completionHandler(nil)
    }
}
