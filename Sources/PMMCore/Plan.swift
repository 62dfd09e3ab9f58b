/// What apply does to one pipe. Small and closed, as terraform's `plans.Action`.
public enum Action: String, Hashable, Sendable, Codable, CaseIterable {
    case create, update, replace, delete, noop

    /// The symbol `pmm diff` prints: `+ ~ ± -`.
    public var symbol: String {
        switch self {
        case .create: "+"
        case .update: "~"
        case .replace: "±"
        case .delete: "-"
        case .noop: " "
        }
    }

    /// Execution order: new pipes before changed ones before removals.
    var phase: Int {
        switch self {
        case .create: 0
        case .replace: 1
        case .update: 2
        case .delete: 3
        case .noop: 4
        }
    }
}

/// One attribute that differs: `mode 0640 -> 0240`.
public struct FieldChange: Hashable, Sendable {
    public var field: String
    public var before: String
    public var after: String

    public init(field: String, before: String, after: String) {
        self.field = field
        self.before = before
        self.after = after
    }
}

/// A planned change to one pipe.
public struct PipeChange: Hashable, Sendable {
    public var action: Action
    public var name: String
    /// What the spec asks for (nil for a delete).
    public var desired: DesiredPipe?
    /// The file as observed (nil when absent).
    public var observed: ObservedFile?
    /// The attributes that change.
    public var fields: [FieldChange]
    /// Why, for people only: apply never decides anything from a reason.
    public var reason: String?

    public init(
        action: Action, name: String, desired: DesiredPipe? = nil, observed: ObservedFile? = nil,
        fields: [FieldChange] = [], reason: String? = nil
    ) {
        self.action = action
        self.name = name
        self.desired = desired
        self.observed = observed
        self.fields = fields
        self.reason = reason
    }
}

/// A path pmm must not touch that stands where the spec wants a pipe. Any conflict blocks the whole apply.
public struct Conflict: Hashable, Sendable {
    public var name: String
    public var problem: String
    public var fix: String

    public init(name: String, problem: String, fix: String) {
        self.name = name
        self.problem = problem
        self.fix = fix
    }
}

/// The result of planning: a value that apply executes and diff renders.
///
/// It carries the observed state it was computed from, so the executor can refuse to act on a file that
/// changed since (a different inode than planned).
public struct Plan: Hashable, Sendable {
    /// The root directory must be created first.
    public var createRoot: Bool
    /// Changes to make, sorted by (phase, name). Never contains `.noop`.
    public var changes: [PipeChange]
    /// Pipes pmm made that the spec no longer names, left in place because `--prune` was not given.
    public var orphans: [PipeChange]
    /// Paths that block the apply.
    public var conflicts: [Conflict]
    /// Pipes already as desired.
    public var unchanged: [String]
    /// What the plan was computed from.
    public var observed: ObservedState

    public init(
        createRoot: Bool, changes: [PipeChange], orphans: [PipeChange], conflicts: [Conflict], unchanged: [String],
        observed: ObservedState
    ) {
        self.createRoot = createRoot
        self.changes = changes
        self.orphans = orphans
        self.conflicts = conflicts
        self.unchanged = unchanged
        self.observed = observed
    }

    /// Nothing to do to the pipes (orphans left alone do not count).
    public var isEmpty: Bool { !createRoot && changes.isEmpty }

    /// Counts per action, for summaries.
    public func count(_ action: Action) -> Int { changes.count { $0.action == action } }
}
