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
/// Its storage grows on demand up to `maximumFrameSize + readSize` bytes, so an idle pipe costs nothing and a
/// busy one is bounded whatever its producer writes. Frames are found in place (no copy); `prepare(minimum:)`
/// moves a trailing partial frame to the front (and grows if needed) before the next read. Not thread-safe:
/// one pipe, one owner.
public struct FrameBuffer: Sendable {
    public let maximumFrameSize: Int
    /// The most bytes the storage may hold.
    public let capacityLimit: Int
    public private(set) var storage: [UInt8] = []
    /// Unconsumed bytes are `storage[start..<end]`.
    public private(set) var start = 0
    public private(set) var end = 0

    /// - Parameters:
    ///   - maximumFrameSize: the largest frame accepted, prefix included.
    ///   - readSize: how much one read may add beyond a partial maximal frame.
    public init(maximumFrameSize: Int, readSize: Int = 256 << 10) {
        precondition(maximumFrameSize >= 16, "frames need room")
        self.maximumFrameSize = maximumFrameSize
        self.capacityLimit = maximumFrameSize + readSize
    }

    /// Makes room for a read of at least `minimum` bytes (fewer if the limit is reached): moves unconsumed bytes
    /// to the front, and grows the storage when that is not enough. Frame ranges returned before are invalid
    /// afterwards.
    public mutating func prepare(minimum: Int) {
        if freeSpace >= minimum { return }
        compact()
        if freeSpace >= minimum || storage.count >= capacityLimit { return }
        let size = Swift.min(capacityLimit, Swift.max(storage.count * 2, end + minimum, 4096))
        let old = storage
        let used = end
        storage = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            old.withUnsafeBufferPointer { source in
                if used > 0 { buffer.baseAddress!.initialize(from: source.baseAddress!, count: used) }
            }
            // The rest is filled by reads before it is looked at; zeroing it would only touch pages.
            initialized = size
        }
    }

    /// Releases the storage when nothing is buffered (after a burst), so an idle pipe costs nothing.
    public mutating func shrinkIfIdle() {
        if start == end && !storage.isEmpty {
            storage = []
            start = 0
            end = 0
        }
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

    /// Forgets the first `count` buffered bytes (at most `pending`).
    public mutating func discard(_ count: Int) {
        start += min(max(0, count), pending)
        if start == end { reset() }
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

    /// Appends bytes (for tests and in-memory producers), growing as `prepare` does.
    public mutating func append(_ bytes: some Collection<UInt8>) {
        prepare(minimum: bytes.count)
        precondition(bytes.count <= freeSpace, "FrameBuffer overflow: more than its limit is pending")
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
