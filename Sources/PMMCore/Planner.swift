/// Computes what apply must do: desired pipes + observed state -> `Plan`. Pure and deterministic.
///
/// The rules, in the order they are tried for each pipe the spec names:
/// 1. Absent: **create**.
/// 2. Something other than a FIFO stands there (a symlink, a file, a directory, …), or a FIFO that pmm's
///    inventory does not know (another inode): a **conflict**. pmm never follows, replaces or removes what it
///    did not make; the whole apply is refused until a person moves it.
/// 3. Owner or group differs (the writer or the reader changes), or the mode grants a bit the spec does not:
///    **replace** with a new inode, because chmod and chown do not revoke a descriptor already open.
/// 4. The mode grants less than the spec, or the pipe size changes: **update** in place (chmod; the size is
///    applied by the router when it opens the pipe).
///
/// Pipes in the inventory that the spec no longer names are deleted with `prune`, otherwise reported as
/// orphans. Inventory records whose file is gone, or was replaced by someone else, are forgotten (the file,
/// if any, is left alone).
public enum Planner {
    public static func plan(desired: [DesiredPipe], observed: ObservedState, prune: Bool) -> Plan {
        var changes: [PipeChange] = []
        var orphans: [PipeChange] = []
        var conflicts: [Conflict] = []
        var unchanged: [String] = []
        let desiredNames = Set(desired.map(\.name))

        for pipe in desired.sorted(by: { $0.name < $1.name }) {
            let record = observed.inventory[pipe.name]
            guard let file = observed.files[pipe.name] else {
                changes.append(
                    PipeChange(
                        action: .create, name: pipe.name, desired: pipe,
                        reason: record == nil ? nil : "it was removed outside pmm"))
                continue
            }
            guard file.kind == .fifo else {
                conflicts.append(
                    Conflict(
                        name: pipe.name,
                        problem: "\(file.kind.withArticle) stands where this pipe belongs; pmm never follows or replaces it",
                        fix: "remove or move it by hand, then apply again"))
                continue
            }
            guard let record, record.matches(file) else {
                conflicts.append(
                    Conflict(
                        name: pipe.name,
                        problem: "a FIFO that pmm did not create stands here (inode \(file.inode) is not in its inventory)",
                        fix: "remove or move it by hand, then apply again; pmm only changes files it created"))
                continue
            }
            var fields: [FieldChange] = []
            if file.uid != pipe.uid {
                fields.append(FieldChange(field: "owner", before: "uid \(file.uid)", after: "uid \(pipe.uid)"))
            }
            if file.gid != pipe.gid {
                fields.append(FieldChange(field: "group", before: "gid \(file.gid)", after: "gid \(pipe.gid)"))
            }
            if file.mode != pipe.mode {
                fields.append(FieldChange(field: "mode", before: octal(file.mode), after: octal(pipe.mode)))
            }
            if record.pipeSize != pipe.pipeSize {
                fields.append(
                    FieldChange(field: "size", before: sizeText(record.pipeSize), after: sizeText(pipe.pipeSize)))
            }
            if fields.isEmpty {
                unchanged.append(pipe.name)
            } else if file.uid != pipe.uid || file.gid != pipe.gid {
                changes.append(
                    PipeChange(
                        action: .replace, name: pipe.name, desired: pipe, observed: file, fields: fields,
                        reason: "its writer or reader changes; a new inode revokes descriptors already open"))
            } else if file.mode & ~pipe.mode != 0 {
                changes.append(
                    PipeChange(
                        action: .replace, name: pipe.name, desired: pipe, observed: file, fields: fields,
                        reason: "its mode grants more than the spec; a new inode revokes descriptors opened meanwhile"))
            } else {
                changes.append(
                    PipeChange(action: .update, name: pipe.name, desired: pipe, observed: file, fields: fields))
            }
        }

        for record in observed.inventory.values.sorted(by: { $0.name < $1.name }) where !desiredNames.contains(record.name) {
            guard let file = observed.files[record.name] else {
                changes.append(PipeChange(action: .delete, name: record.name, reason: "already gone; pmm forgets it"))
                continue
            }
            guard record.matches(file) else {
                changes.append(
                    PipeChange(
                        action: .delete, name: record.name,
                        reason: "replaced outside pmm; pmm forgets it and leaves the file alone"))
                continue
            }
            let change = PipeChange(
                action: .delete, name: record.name, observed: file, reason: "the spec no longer names it")
            if prune { changes.append(change) } else { orphans.append(change) }
        }

        changes.sort { ($0.action.phase, $0.name) < ($1.action.phase, $1.name) }
        return Plan(
            createRoot: !observed.rootExists, changes: changes, orphans: orphans, conflicts: conflicts,
            unchanged: unchanged, observed: observed)
    }

    /// `0240`.
    public static func octal(_ mode: UInt32) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// `1MiB`, `64KiB`, `kernel default`.
    public static func sizeText(_ bytes: Int?) -> String {
        guard let bytes else { return "kernel default" }
        if bytes % (1 << 20) == 0 { return "\(bytes >> 20)MiB" }
        if bytes % (1 << 10) == 0 { return "\(bytes >> 10)KiB" }
        return "\(bytes)B"
    }
}
