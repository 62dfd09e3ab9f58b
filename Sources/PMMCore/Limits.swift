/// The bounds validation enforces on spec numbers. Documented in the README and in `mesh.schema.json`.
public enum Limits {
    public static let shards = 1...4096
    public static let replicas = 1...1024
    /// uids and gids: `4294967295` is `(uid_t)-1`, which chown reads as "leave unchanged".
    public static let id: ClosedRange<Int> = 0...4_294_967_294
    public static let version = 1...1_000_000
    public static let maxRate = 0...100_000_000
    public static let burst = 0...100_000_000
    public static let buffer = 1...10_000_000
    public static let weight = 0...1_000_000
    /// A consumer's `capacity` (messages/s).
    public static let capacity = 1...100_000_000
    /// F_SETPIPE_SZ: one page up to 1 GiB (the kernel further caps it by `fs.pipe-max-size`).
    public static let pipeSize = 4096...(1 << 30)
    /// Pipes one mesh may ask for in total.
    public static let pipesPerMesh = 200_000
}
