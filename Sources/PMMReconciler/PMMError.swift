public import PMMCore
public import PMMRegistry
public import PMMSystem

/// Why a command could not do its job. Each case carries what the renderer needs to say what, where and
/// what to do.
public enum PMMError: Error, Sendable {
    /// The spec has errors; nothing was changed.
    case invalidSpec(LoadedSpec)
    /// Paths in the root block the apply; nothing was changed.
    case conflicts(root: String, [Conflict])
    case system(FIFOError)
    case registry(RegistryError)
    /// `pmm rollback N` with no revision N.
    case noSuchRevision(Int, latest: Int?)
    /// A `--base` that is neither a file nor a git revision of the spec.
    case baseNotFound(String)
    /// A spec with `nodes:` and no `--node` (or `PMM_NODE`), or a node the spec does not declare.
    case node(given: String?, declared: [String])
}

extension PMMError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .invalidSpec(let loaded): "the spec is invalid: \(loaded.diagnostics.first.map { "\($0.path): \($0.summary)" } ?? "")"
        case .conflicts(let root, let conflicts): "\(conflicts.count) paths in \(root) block the apply"
        case .system(let error): error.description
        case .registry(let error): error.description
        case .noSuchRevision(let number, _): "no revision \(number)"
        case .baseNotFound(let base): "no base \(base)"
        case .node(let given?, let declared):
            "node '\(given)' is not one of the spec's nodes (\(declared.joined(separator: ", "))); give --node or PMM_NODE one of them"
        case .node(nil, let declared):
            "the spec spans nodes (\(declared.joined(separator: ", "))): say which one this host is with --node NAME or PMM_NODE"
        }
    }
}
