/// The frames of one received batch, in one buffer: no allocation per frame.
///
/// `storage` holds the batch as it arrived; each entry names its frame's target instance and where its bytes
/// (a varint length, then a `pmm.v1.Envelope`, exactly as on the pipes) are in `storage`. A router writes a
/// frame with `withFrameBytes(at:)`; as a collection it also gives `LinkFrame` values (each one a copy: handy in
/// tests, slower on the hot path).
public struct LinkFrames: RandomAccessCollection, Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public var target: String
        public var range: Range<Int>

        public init(target: String, range: Range<Int>) {
            self.target = target
            self.range = range
        }
    }

    public let storage: [UInt8]
    public let entries: [Entry]

    public init(storage: [UInt8], entries: [Entry]) {
        self.storage = storage
        self.entries = entries
    }

    /// Copies frames into one buffer.
    public init(_ frames: [LinkFrame]) {
        var storage: [UInt8] = []
        var entries: [Entry] = []
        for frame in frames {
            entries.append(Entry(target: frame.target, range: storage.count..<(storage.count + frame.bytes.count)))
            storage.append(contentsOf: frame.bytes)
        }
        self.init(storage: storage, entries: entries)
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { entries.count }

    public subscript(position: Int) -> LinkFrame {
        LinkFrame(target: entries[position].target, bytes: Array(storage[entries[position].range]))
    }

    /// The target instance of frame `position`.
    public func target(at position: Int) -> String { entries[position].target }

    /// Calls `body` with the bytes of frame `position`, borrowed from `storage`.
    public func withFrameBytes<R>(at position: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { raw in try body(UnsafeRawBufferPointer(rebasing: raw[entries[position].range])) }
    }

    /// The frames' bytes, added up.
    public var byteCount: Int { entries.reduce(0) { $0 + $1.range.count } }

    /// The same frames without the first `count` (the storage is shared, not copied).
    public func dropping(_ count: Int) -> LinkFrames {
        LinkFrames(storage: storage, entries: Array(entries.dropFirst(count)))
    }

    public static func == (a: LinkFrames, b: LinkFrames) -> Bool {
        a.elementsEqual(b)
    }
}
