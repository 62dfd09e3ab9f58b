/// The contract's names: instances and pipe files (DESIGN.md, "Pipe names").
///
/// | pipe    | file name                               |
/// |---------|-----------------------------------------|
/// | ingress | `<producer>.<dataType>.s<shard>.in`     |
/// | egress  | `<instance>.<dataType>.out`             |
///
/// Names are `[a-z][a-z0-9-]*`, so they hold no `/`, `.` or `..`: a pipe file name can never leave the root,
/// and splitting a file name on `.` is unambiguous.
public enum Naming {
    /// Longest name accepted: 63 characters (a DNS label), which keeps every pipe path well under NAME_MAX.
    public static let maximumNameLength = 63

    /// Whether `name` matches `[a-z][a-z0-9-]*` and is at most 63 characters.
    public static func isValidName(_ name: String) -> Bool {
        let scalars = Array(name.unicodeScalars)
        guard let first = scalars.first, scalars.count <= maximumNameLength, ("a"..."z").contains(first) else {
            return false
        }
        return scalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }
    }

    /// The instance name for replica `index` of `service`: `collector-0`.
    public static func instance(service: String, index: Int) -> String {
        "\(service)-\(index)"
    }

    /// The instance name for replica `index` of `service` on `node` (a multi-node mesh): `collector-edge-a-0`.
    public static func instance(service: String, node: String, index: Int) -> String {
        "\(service)-\(node)-\(index)"
    }

    /// The ingress pipe's file name: `api.metrics.s3.in`.
    public static func ingress(producer: String, dataType: String, shard: Int) -> String {
        "\(producer).\(dataType).s\(shard).in"
    }

    /// The egress pipe's file name: `collector-0.metrics.out`.
    public static func egress(instance: String, dataType: String) -> String {
        "\(instance).\(dataType).out"
    }

    /// Whether a file name has the shape of a pipe pmm would make (used to tell "ours" from debris in reports).
    public static func parse(_ fileName: String) -> (kind: PipeKind, owner: String, dataType: String, shard: Int?)? {
        let parts = fileName.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        if parts.count == 4, parts[3] == "in", parts[2].hasPrefix("s"), let shard = Int(parts[2].dropFirst()),
            isValidName(parts[0]), isValidName(parts[1])
        {
            return (.ingress, parts[0], parts[1], shard)
        }
        if parts.count == 3, parts[2] == "out", isValidName(parts[0]), isValidName(parts[1]) {
            return (.egress, parts[0], parts[1], nil)
        }
        return nil
    }

    /// Directories a mesh root may never be or lie under.
    static let forbiddenRootPrefixes = ["/proc", "/sys", "/dev"]
    /// Directories a mesh root may never be (but may lie under, like `/run/pmm`).
    static let forbiddenRoots: Set<String> = [
        "/", "/bin", "/boot", "/etc", "/home", "/lib", "/lib64", "/opt", "/root", "/run", "/sbin", "/srv", "/tmp",
        "/usr", "/var", "/var/lib", "/var/run", "/var/tmp", "/usr/local", "/mnt", "/media",
    ]

    /// Why `root` is not a safe mesh root, or nil when it is.
    ///
    /// A root must be absolute and normalized (no `.`, `..`, empty components or trailing `/`), and may not be
    /// `/`, a top-level system directory, or anything under `/proc`, `/sys` or `/dev`.
    public static func rootProblem(_ root: String) -> String? {
        guard root.hasPrefix("/") else { return "must be an absolute path" }
        if root == "/" { return "may not be '/'" }
        if root.hasSuffix("/") { return "must not end with '/'" }
        let components = root.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        if components.contains(where: { $0.isEmpty }) { return "must not contain '//'" }
        if components.contains(where: { $0 == "." || $0 == ".." }) { return "must not contain '.' or '..'" }
        if root.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            return "must not contain control characters"
        }
        if forbiddenRoots.contains(root) { return "may not be the system directory '\(root)'" }
        for prefix in forbiddenRootPrefixes where root == prefix || root.hasPrefix(prefix + "/") {
            return "may not lie in '\(prefix)'"
        }
        return nil
    }

    /// The path of `fileName` inside `root`.
    public static func path(root: String, fileName: String) -> String {
        root + "/" + fileName
    }
}

/// Which side of the router a pipe is on.
public enum PipeKind: String, Hashable, Sendable, Codable {
    /// Written by a producing service, read by the router.
    case ingress
    /// Written by the router, read by one consumer instance.
    case egress
}
