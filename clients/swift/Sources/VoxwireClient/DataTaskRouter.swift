import Foundation

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
/// two streaming GETs are registered here.
final class DataTaskRouter: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    private let lock = NSLock()
    private var receivers: [Int: StreamingReceiver] = [:]

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

    private func receiver(for task: URLSessionTask, remove: Bool = false) -> StreamingReceiver? {
        lock.lock()
        defer { lock.unlock() }
        return remove
            ? receivers.removeValue(forKey: task.taskIdentifier)
            : receivers[task.taskIdentifier]
    }

    func urlSession(
        _ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
        completionHandler: @escaping (URLSession.ResponseDisposition) -> Void
    ) {
        if let receiver = receiver(for: dataTask), let http = response as? HTTPURLResponse {
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
