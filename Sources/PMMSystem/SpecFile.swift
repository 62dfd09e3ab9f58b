import Foundation
import Glibc
import PMMCore
import SystemPackage

/// A spec file as read from disk, with what a revision records about it.
public struct SpecFile: Sendable {
    /// The largest spec pmm reads: a mesh of thousands of services fits in far less.
    public static let maximumSize = 4 << 20

    /// The path as the user gave it (diagnostics print this).
    public var displayPath: String
    /// The absolute path.
    public var absolutePath: String
    public var text: String

    public init(displayPath: String, absolutePath: String, text: String) {
        self.displayPath = displayPath
        self.absolutePath = absolutePath
        self.text = text
    }

    /// The directory schema paths are relative to.
    public var directory: String {
        (absolutePath as NSString).deletingLastPathComponent
    }

    /// Reads `path` (or standard input for `-`).
    public static func read(_ path: String) throws(FIFOError) -> SpecFile {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        let bytes: [UInt8]
        if path == "-" {
            switch Sys.readAll(STDIN_FILENO, limit: maximumSize + 1) {
            case .success(let value): bytes = value
            case .failure(let errno): throw .syscall("read", path: "<stdin>", errno)
            }
        } else {
            let fd: Int32
            switch Sys.open(path, O_RDONLY | O_CLOEXEC) {
            case .success(let value): fd = value
            case .failure(.noSuchFileOrDirectory):
                throw FIFOError(.systemCall, path: path, "no such file", hint: "pass the mesh file with -f, e.g. -f mesh.yaml")
            case .failure(let errno): throw .syscall("open", path: path, errno)
            }
            defer { Sys.close(fd) }
            switch Sys.readAll(fd, limit: maximumSize + 1) {
            case .success(let value): bytes = value
            case .failure(let errno): throw .syscall("read", path: path, errno)
            }
        }
        guard bytes.count <= maximumSize else {
            throw FIFOError(.systemCall, path: path, "the file is larger than \(maximumSize >> 20) MiB; is it a mesh spec?")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw FIFOError(.systemCall, path: path, "the file is not UTF-8 text")
        }
        return SpecFile(displayPath: path == "-" ? "<stdin>" : path, absolutePath: path == "-" ? FileManager.default.currentDirectoryPath + "/<stdin>" : absolute, text: text)
    }

    /// The schema paths (as written) that exist, resolved relative to this file's directory.
    public func existingFiles(among paths: some Sequence<String>) -> Set<String> {
        var existing: Set<String> = []
        for path in paths {
            let resolved = path.hasPrefix("/") ? path : directory + "/" + path
            if case .success(let st) = Sys.lstat(resolved), st.fileKind == .regular || st.fileKind == .symlink {
                existing.insert(path)
            }
        }
        return existing
    }
}
