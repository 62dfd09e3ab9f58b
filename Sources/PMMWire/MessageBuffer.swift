/// Length-delimited messages arriving in chunks (the control socket): a varint length, then the body. Unlike
/// `FrameBuffer` it does not look inside the body. Bounded: a body above `maximumSize` is an error.
public struct MessageBuffer: Sendable {
    public let maximumSize: Int
    private var bytes: [UInt8] = []
    private var start = 0

    public init(maximumSize: Int) {
        self.maximumSize = maximumSize
    }

    /// Bytes buffered that are not a whole message yet.
    public var pending: Int { bytes.count - start }

    public mutating func append(_ chunk: some Collection<UInt8>) {
        if start > 0 && start == bytes.count {
            bytes.removeAll(keepingCapacity: true)
            start = 0
        }
        bytes.append(contentsOf: chunk)
    }

    /// The next whole message body, or nil when more bytes are needed.
    ///
    /// - Throws: `FrameError.malformedLength` or `.oversized` when the stream cannot be a message stream.
    public mutating func next() throws(FrameError) -> [UInt8]? {
        let (start, maximum) = (self.start, maximumSize)
        let result: Result<(body: Range<Int>, end: Int)?, FrameError> = bytes.withUnsafeBytes { raw in
            let window = UnsafeRawBufferPointer(rebasing: raw[start...])
            switch Varint.decode(window, at: 0) {
            case .incomplete: return .success(nil)
            case .malformed: return .failure(.malformedLength)
            case .value(let length, let prefix):
                guard length <= UInt64(maximum) else { return .failure(.oversized(length: length, limit: maximum)) }
                guard prefix + Int(length) <= window.count else { return .success(nil) }
                return .success(((start + prefix)..<(start + prefix + Int(length)), start + prefix + Int(length)))
            }
        }
        switch result {
        case .success(let found?):
            self.start = found.end
            let body = Array(bytes[found.body])
            if self.start > 1 << 16 {
                bytes.removeFirst(self.start)
                self.start = 0
            }
            return body
        case .success(nil):
            return nil
        case .failure(let error):
            throw error
        }
    }
}
