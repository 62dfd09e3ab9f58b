/// A frame found in a `FrameBuffer`: where it is (prefix included) and its routing fields.
public struct Frame: Equatable, Sendable {
    /// The whole frame, length prefix included, as offsets into the buffer's storage.
    public var range: Range<Int>
    /// Where the envelope starts (after the prefix).
    public var bodyStart: Int
    /// Routing fields, with ranges relative to the envelope's start.
    public var fields: RoutingFields

    public var size: Int { range.count }
}

/// The read side of one pipe: bytes arrive in arbitrary chunks, complete frames come out.
///
/// Holds one fixed allocation of `maximumFrameSize + readSize` bytes, so a pipe's memory is bounded whatever
/// its producer writes. Frames are found in place (no copy); `compact()` moves a trailing partial frame to
/// the front before the next read. Not thread-safe: one pipe, one owner.
public struct FrameBuffer: Sendable {
    public let maximumFrameSize: Int
    public private(set) var storage: [UInt8]
    /// Unconsumed bytes are `storage[start..<end]`.
    public private(set) var start = 0
    public private(set) var end = 0

    /// - Parameters:
    ///   - maximumFrameSize: the largest frame accepted, prefix included.
    ///   - readSize: how much one read may add beyond a partial maximal frame.
    public init(maximumFrameSize: Int, readSize: Int = 256 << 10) {
        precondition(maximumFrameSize >= 16, "frames need room")
        self.maximumFrameSize = maximumFrameSize
        self.storage = [UInt8](repeating: 0, count: maximumFrameSize + readSize)
    }

    /// Bytes buffered that are not yet a whole frame.
    public var pending: Int { end - start }

    /// Room left for the next read.
    public var freeSpace: Int { storage.count - end }

    /// Moves unconsumed bytes to the front. Frame ranges returned before are invalid afterwards.
    public mutating func compact() {
        guard start > 0 else { return }
        let count = end - start
        if count > 0 {
            storage.withUnsafeMutableBytes { raw in
                raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: count)
            }
        }
        start = 0
        end = count
    }

    /// Forgets every buffered byte (a reset after garbage).
    public mutating func reset() {
        start = 0
        end = 0
    }

    /// Lets `body` write up to `freeSpace` bytes at the end (a `read(2)`), and records how many it wrote.
    /// Returns what `body` returned.
    public mutating func write<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> (written: Int, result: R)) rethrows -> R {
        let offset = end
        let (written, result) = try storage.withUnsafeMutableBytes { raw in
            try body(UnsafeMutableRawBufferPointer(rebasing: raw[offset...]))
        }
        precondition(written >= 0 && written <= storage.count - offset)
        end += written
        return result
    }

    /// Appends bytes (for tests and in-memory producers).
    public mutating func append(_ bytes: some Collection<UInt8>) {
        precondition(bytes.count <= freeSpace, "FrameBuffer overflow: compact or read less")
        let array = Array(bytes)
        write { (raw: UnsafeMutableRawBufferPointer) -> (written: Int, result: Void) in
            array.withUnsafeBytes { raw.copyMemory(from: $0) }
            return (array.count, ())
        }
    }

    /// The next complete frame, or nil when more bytes are needed.
    ///
    /// - Throws: `FrameError` when the bytes are not a frame; the buffer should then be reset.
    public mutating func next() throws(FrameError) -> Frame? {
        let (start, end, maximum) = (self.start, self.end, maximumFrameSize)
        let found: Result<Frame?, FrameError> = storage.withUnsafeBytes { raw in
            let window = UnsafeRawBufferPointer(rebasing: raw[start..<end])
            switch Varint.decode(window, at: 0) {
            case .incomplete: return .success(nil)
            case .malformed: return .failure(.malformedLength)
            case .value(let length, let prefix):
                guard length <= UInt64(maximum - prefix) else {
                    return .failure(.oversized(length: length, limit: maximum - prefix))
                }
                let total = prefix + Int(length)
                guard total <= window.count else { return .success(nil) }
                let body = UnsafeRawBufferPointer(rebasing: window[prefix..<total])
                do throws(FrameError) {
                    let fields = try EnvelopeScanner.scan(body)
                    return .success(Frame(range: start..<(start + total), bodyStart: start + prefix, fields: fields))
                } catch {
                    return .failure(error)
                }
            }
        }
        switch found {
        case .success(let frame):
            if let frame { self.start = frame.range.upperBound }
            return frame
        case .failure(let error):
            throw error
        }
    }

    /// Calls `body` with the bytes of `range` (valid only during the call).
    public func withBytes<R>(_ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { raw in try body(UnsafeRawBufferPointer(rebasing: raw[range])) }
    }
}
