/// The type of a directory entry, as `lstat` reports it (a symbolic link is never followed).
public enum FileKind: String, Hashable, Sendable, Codable {
    case fifo, regular, directory, symlink, socket, characterDevice, blockDevice, unknown

    /// "a symbolic link", "a regular file", … for messages.
    public var withArticle: String {
        switch self {
        case .fifo: "a FIFO"
        case .regular: "a regular file"
        case .directory: "a directory"
        case .symlink: "a symbolic link"
        case .socket: "a socket"
        case .characterDevice: "a character device"
        case .blockDevice: "a block device"
        case .unknown: "a file of unknown type"
        }
    }
}

/// One entry of the pipe root, as observed.
public struct ObservedFile: Hashable, Sendable {
    public var name: String
    public var kind: FileKind
    public var uid: UInt32
    public var gid: UInt32
    /// Permission bits (`st_mode & 0o7777`).
    public var mode: UInt32
    public var device: UInt64
    public var inode: UInt64

    public init(name: String, kind: FileKind, uid: UInt32, gid: UInt32, mode: UInt32, device: UInt64, inode: UInt64) {
        self.name = name
        self.kind = kind
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.device = device
        self.inode = inode
    }
}

/// What pmm recorded about a pipe it made: the inventory is how pmm knows a file is its own.
public struct InventoryRecord: Hashable, Sendable {
    public var name: String
    public var kind: PipeKind
    public var dataType: String
    public var uid: UInt32
    public var gid: UInt32
    public var mode: UInt32
    public var pipeSize: Int?
    public var device: UInt64
    public var inode: UInt64

    public init(
        name: String, kind: PipeKind, dataType: String, uid: UInt32, gid: UInt32, mode: UInt32, pipeSize: Int?,
        device: UInt64, inode: UInt64
    ) {
        self.name = name
        self.kind = kind
        self.dataType = dataType
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.pipeSize = pipeSize
        self.device = device
        self.inode = inode
    }

    /// Whether `file` is the very inode pmm made.
    public func matches(_ file: ObservedFile) -> Bool {
        file.kind == .fifo && file.device == device && file.inode == inode
    }
}

/// Everything the planner knows about the host: the root's entries and pmm's inventory.
public struct ObservedState: Hashable, Sendable {
    /// Whether the root directory exists (the system layer refuses a root that is a symlink or writable by others).
    public var rootExists: Bool
    /// Entries of the root, by file name.
    public var files: [String: ObservedFile]
    /// What pmm made, by file name.
    public var inventory: [String: InventoryRecord]

    public init(rootExists: Bool, files: [String: ObservedFile] = [:], inventory: [String: InventoryRecord] = [:]) {
        self.rootExists = rootExists
        self.files = files
        self.inventory = inventory
    }

    /// A host where nothing exists yet.
    public static let empty = ObservedState(rootExists: false)
}
