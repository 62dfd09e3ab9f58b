import Foundation
import GRDB
public import PMMCore

/// One applied revision of a mesh spec.
public struct Revision: Sendable, Hashable {
    public var number: Int
    /// When it was applied, ISO 8601 in UTC.
    public var appliedAt: String
    public var specSHA256: String
    /// The spec text as applied (what `pmm rollback` applies again, and what the router reads).
    public var specText: String
    /// The spec file's absolute path at apply time (schema paths are relative to it).
    public var specFile: String
    /// The pipe root applied to (the spec's, or the `--root` that overrode it).
    public var root: String
    public var gitCommit: String?
    public var gitDirty: Bool?
    /// `apply` or `rollback to N`.
    public var source: String
    /// One line: what the apply changed.
    public var summary: String
    /// JSON: data type -> writer version -> reader versions, from the schema check at apply time; nil when
    /// it did not run (the router then matches equal versions only).
    public var schemaMatrix: String?
    /// The node it was applied on, in a multi-node mesh (`--node`); nil on one host.
    public var node: String?

    public init(
        number: Int = 0, appliedAt: String, specSHA256: String, specText: String, specFile: String,
        root: String, gitCommit: String? = nil, gitDirty: Bool? = nil, source: String, summary: String, schemaMatrix: String? = nil,
        node: String? = nil
    ) {
        self.node = node
        self.number = number
        self.appliedAt = appliedAt
        self.specSHA256 = specSHA256
        self.specText = specText
        self.specFile = specFile
        self.root = root
        self.gitCommit = gitCommit
        self.gitDirty = gitDirty
        self.source = source
        self.summary = summary
        self.schemaMatrix = schemaMatrix
    }
}

/// A running instance that registered through `pmm serve`: its lease.
///
/// A lease lives with process `pid` (when not 0), for `ttlSeconds` after its last renewal (when not 0), and,
/// when heartbeats were promised (`heartbeatSeconds`), while one arrives at least every three intervals.
/// Registration and every heartbeat renew it (`renewedAt`).
public struct InstanceRecord: Sendable, Hashable {
    public var instance: String
    public var service: String
    /// The process the lease lives with; 0 for none (a lease for a fixed time, `pmm register --ttl`).
    public var pid: Int32
    /// The uid that registered it.
    public var uid: UInt32
    public var registeredAt: String
    public var lastHeartbeat: String
    /// A narrower rate the instance asked for (0: the spec's).
    public var maxRate: Int
    /// Seconds the lease lasts after each renewal; 0: no time limit.
    public var ttlSeconds: Double
    /// The heartbeat interval promised; 0: none (the lease does not depend on heartbeats).
    public var heartbeatSeconds: Double
    /// When the lease was last renewed (registration or heartbeat), in seconds since 1970 (wall clock).
    public var renewedAt: Double
    /// The consumer's expected volume (messages/s) it registered with; 0: the spec's `capacity`.
    public var capacity: Int
    /// `pid`'s start time (clock ticks since boot, /proc/PID/stat), so a recycled pid is not taken for the
    /// process; 0 when unknown.
    public var pidStartTime: UInt64

    public init(
        instance: String, service: String, pid: Int32, uid: UInt32, registeredAt: String, lastHeartbeat: String, maxRate: Int,
        ttlSeconds: Double = 0, heartbeatSeconds: Double = 0, renewedAt: Double = 0, capacity: Int = 0, pidStartTime: UInt64 = 0
    ) {
        self.instance = instance
        self.service = service
        self.pid = pid
        self.uid = uid
        self.registeredAt = registeredAt
        self.lastHeartbeat = lastHeartbeat
        self.maxRate = maxRate
        self.ttlSeconds = ttlSeconds
        self.heartbeatSeconds = heartbeatSeconds
        self.renewedAt = renewedAt
        self.capacity = capacity
        self.pidStartTime = pidStartTime
    }

    /// Why a lease has ended.
    public enum LeaseEnd: Equatable, Sendable, CustomStringConvertible {
        /// Its process is gone.
        case processGone(pid: Int32)
        /// Its ttl passed without a renewal.
        case ttlPassed(seconds: Double)
        /// Three heartbeats in a row did not come.
        case heartbeatsMissed(interval: Double)

        /// The event kind the registry records.
        public var kind: String {
            switch self {
            case .processGone: "lease-ended"
            case .ttlPassed, .heartbeatsMissed: "lease-expired"
            }
        }

        public var description: String {
            switch self {
            case .processGone(let pid): "its process \(pid) is gone"
            case .ttlPassed(let seconds): "its ttl of \(Self.seconds(seconds)) passed without a renewal"
            case .heartbeatsMissed(let interval): "three heartbeats missed (promised every \(Self.seconds(interval)))"
            }
        }

        public static func seconds(_ value: Double) -> String {
            value == value.rounded() ? "\(Int(value))s" : "\(value)s"
        }
    }

    /// Whether the lease has ended at `now` (seconds since 1970), and why. Pure: the caller says whether the
    /// lease's process is alive.
    public func leaseEnd(now: Double, processAlive: Bool) -> LeaseEnd? {
        if pid != 0 && !processAlive { return .processGone(pid: pid) }
        if ttlSeconds > 0 && now - renewedAt > ttlSeconds { return .ttlPassed(seconds: ttlSeconds) }
        if heartbeatSeconds > 0 && now - renewedAt > 3 * heartbeatSeconds { return .heartbeatsMissed(interval: heartbeatSeconds) }
        return nil
    }
}

/// What an apply was about to link into place, recorded before the link so that a crash between the link and
/// the inventory row leaves a trace: the next apply (or self-heal) adopts the FIFO when it is this very inode,
/// and drops the intent otherwise.
public struct PipeIntent: Sendable, Hashable {
    /// What the link does.
    public enum Action: String, Sendable {
        /// `linkat` of a new FIFO to a free name.
        case create
        /// `renameat` of a new FIFO over the old one.
        case replace
    }

    public var action: Action
    /// The pipe root the name is in.
    public var root: String
    /// The inventory row the apply would have written: the new FIFO's owner, mode, device and inode (known
    /// before the link: the temporary FIFO is the same inode).
    public var record: InventoryRecord
    /// When the intent was recorded, ISO 8601 in UTC.
    public var at: String

    public init(action: Action, root: String, record: InventoryRecord, at: String) {
        self.action = action
        self.root = root
        self.record = record
        self.at = at
    }
}

/// A failure of the registry, with the database path.
public struct RegistryError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var message: String

    public var description: String { "\(path): registry: \(message)" }
}

/// The SQLite registry in the state directory: pmm's inventory of the pipes it made, the revisions it applied,
/// and an event log. Every write is one transaction. Safe to share between threads (GRDB serializes access).
///
/// The event log is bounded: each insert deletes, in the same transaction, the rows older than the newest
/// `maximumEvents`.
public final class Registry: Sendable {
    let database: DatabaseQueue
    public let path: String
    /// The event log keeps at most this many rows (the newest).
    public let maximumEvents: Int

    /// The default bound of the event log.
    public static let defaultMaximumEvents = 10_000

    /// Opens (creating and migrating) the registry at `path`.
    ///
    /// - Parameter maximumEvents: the event log keeps the newest this many events (at least 1).
    public init(path: String, maximumEvents: Int = Registry.defaultMaximumEvents) throws(RegistryError) {
        self.path = path
        self.maximumEvents = max(1, maximumEvents)
        do {
            var configuration = Configuration()
            configuration.busyMode = .timeout(10)
            // WAL with synchronous=NORMAL: a commit does not wait for fsync, so apply records each pipe as it
            // makes it (16,000 pipes in seconds, not minutes). A killed process loses nothing committed; a
            // power cut can roll back the last commits, never corrupt the file.
            configuration.prepareDatabase { db in
                try db.execute(sql: "PRAGMA synchronous = NORMAL")
            }
            database = try DatabaseQueue(path: path, configuration: configuration)
            try database.writeWithoutTransaction { db in _ = try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL") }
            try Self.migrator.migrate(database)
        } catch {
            throw RegistryError(path: path, message: Self.describe(error))
        }
    }

    /// A registry in memory (real SQLite, nothing on disk), for tests and dry runs.
    public init(inMemory name: String? = nil, maximumEvents: Int = Registry.defaultMaximumEvents) throws(RegistryError) {
        self.path = ":memory:"
        self.maximumEvents = max(1, maximumEvents)
        do {
            database = try DatabaseQueue(named: name)
            try Self.migrator.migrate(database)
        } catch {
            throw RegistryError(path: path, message: Self.describe(error))
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? DatabaseError {
            return error.message ?? "\(error.resultCode)"
        }
        return "\(error)"
    }

    /// Schema migrations, oldest first. Never edit one that has shipped: add another.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE revision (
                        number INTEGER PRIMARY KEY AUTOINCREMENT,
                        appliedAt TEXT NOT NULL,
                        specSHA256 TEXT NOT NULL,
                        specText TEXT NOT NULL,
                        specFile TEXT NOT NULL,
                        root TEXT NOT NULL,
                        gitCommit TEXT,
                        gitDirty INTEGER,
                        source TEXT NOT NULL,
                        summary TEXT NOT NULL
                    );
                    CREATE TABLE inventory (
                        name TEXT PRIMARY KEY,
                        kind TEXT NOT NULL,
                        dataType TEXT NOT NULL,
                        uid INTEGER NOT NULL,
                        gid INTEGER NOT NULL,
                        mode INTEGER NOT NULL,
                        pipeSize INTEGER,
                        device INTEGER NOT NULL,
                        inode INTEGER NOT NULL
                    );
                    CREATE TABLE event (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        at TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        message TEXT NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v2: instances and runtime routing rules") { db in
            try db.execute(
                sql: """
                    CREATE TABLE instance (
                        instance TEXT PRIMARY KEY,
                        service TEXT NOT NULL,
                        pid INTEGER NOT NULL,
                        uid INTEGER NOT NULL,
                        registeredAt TEXT NOT NULL,
                        lastHeartbeat TEXT NOT NULL,
                        maxRate INTEGER NOT NULL DEFAULT 0
                    );
                    CREATE TABLE routingRule (
                        dataType TEXT NOT NULL,
                        service TEXT NOT NULL,
                        weight INTEGER NOT NULL,
                        setBy INTEGER NOT NULL,
                        at TEXT NOT NULL,
                        PRIMARY KEY (dataType, service)
                    );
                    """)
        }
        migrator.registerMigration("v3: the schema compatibility matrix of each revision") { db in
            try db.execute(sql: "ALTER TABLE revision ADD COLUMN schemaMatrix TEXT")
        }
        migrator.registerMigration("v4: intents of an apply, written before a FIFO is linked into place") { db in
            try db.execute(
                sql: """
                    CREATE TABLE intent (
                        name TEXT PRIMARY KEY,
                        action TEXT NOT NULL,
                        root TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        dataType TEXT NOT NULL,
                        uid INTEGER NOT NULL,
                        gid INTEGER NOT NULL,
                        mode INTEGER NOT NULL,
                        pipeSize INTEGER,
                        device INTEGER NOT NULL,
                        inode INTEGER NOT NULL,
                        at TEXT NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v5: registrations are leases (ttl, heartbeats, capacity, the pid's start time)") { db in
            try db.execute(
                sql: """
                    ALTER TABLE instance ADD COLUMN ttlSeconds REAL NOT NULL DEFAULT 0;
                    ALTER TABLE instance ADD COLUMN heartbeatSeconds REAL NOT NULL DEFAULT 0;
                    ALTER TABLE instance ADD COLUMN renewedAt REAL NOT NULL DEFAULT 0;
                    ALTER TABLE instance ADD COLUMN capacity INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE instance ADD COLUMN pidStartTime INTEGER NOT NULL DEFAULT 0;
                    """)
        }
        migrator.registerMigration("v6: the node a revision was applied on (multi-node meshes)") { db in
            try db.execute(sql: "ALTER TABLE revision ADD COLUMN node TEXT")
        }
        return migrator
    }

    func read<T>(_ body: (Database) throws -> T) throws(RegistryError) -> T {
        do { return try database.read(body) } catch { throw RegistryError(path: path, message: Self.describe(error)) }
    }

    func write<T>(_ body: (Database) throws -> T) throws(RegistryError) -> T {
        do { return try database.write(body) } catch { throw RegistryError(path: path, message: Self.describe(error)) }
    }

    // MARK: Inventory

    /// What pmm made, by file name.
    public func inventory() throws(RegistryError) -> [String: InventoryRecord] {
        try read { db in
            var records: [String: InventoryRecord] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT * FROM inventory") {
                let record = Self.inventoryRecord(row)
                records[record.name] = record
            }
            return records
        }
    }

    static func inventoryRecord(_ row: Row) -> InventoryRecord {
        InventoryRecord(
            name: row["name"], kind: PipeKind(rawValue: row["kind"]) ?? .ingress, dataType: row["dataType"],
            uid: UInt32(row["uid"] as Int64), gid: UInt32(row["gid"] as Int64),
            mode: UInt32(row["mode"] as Int64), pipeSize: row["pipeSize"],
            device: UInt64(bitPattern: row["device"]), inode: UInt64(bitPattern: row["inode"]))
    }

    /// Records a pipe pmm made or changed, and ends the intent of that name (in the same transaction).
    public func record(_ record: InventoryRecord) throws(RegistryError) {
        try write { db in
            try db.execute(sql: "DELETE FROM intent WHERE name = ?", arguments: [record.name])
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO inventory (name, kind, dataType, uid, gid, mode, pipeSize, device, inode)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    record.name, record.kind.rawValue, record.dataType, Int64(record.uid), Int64(record.gid),
                    Int64(record.mode), record.pipeSize, Int64(bitPattern: record.device),
                    Int64(bitPattern: record.inode),
                ])
        }
    }

    /// Forgets a pipe (after removing it, or when it is gone).
    public func forget(_ name: String) throws(RegistryError) {
        try write { db in try db.execute(sql: "DELETE FROM inventory WHERE name = ?", arguments: [name]) }
    }

    // MARK: Intents

    /// Records what an apply is about to link into place (replacing an older intent of the same name).
    /// `record(_:)` of that name ends it; `forgetIntent(_:)` drops it.
    public func recordIntent(_ intent: PipeIntent) throws(RegistryError) {
        try write { db in
            let record = intent.record
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO intent (name, action, root, kind, dataType, uid, gid, mode, pipeSize, device, inode, at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    record.name, intent.action.rawValue, intent.root, record.kind.rawValue, record.dataType, Int64(record.uid),
                    Int64(record.gid), Int64(record.mode), record.pipeSize, Int64(bitPattern: record.device),
                    Int64(bitPattern: record.inode), intent.at,
                ])
        }
    }

    /// Intents no apply finished (an apply that stopped between recording one and recording the pipe), by name.
    public func intents() throws(RegistryError) -> [PipeIntent] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM intent ORDER BY name").map { row in
                PipeIntent(
                    action: PipeIntent.Action(rawValue: row["action"]) ?? .create, root: row["root"], record: Self.inventoryRecord(row),
                    at: row["at"])
            }
        }
    }

    /// Drops the intent of `name` (the link it announced did not happen).
    public func forgetIntent(_ name: String) throws(RegistryError) {
        try write { db in try db.execute(sql: "DELETE FROM intent WHERE name = ?", arguments: [name]) }
    }

    // MARK: Revisions

    /// Records a revision and returns it with its number.
    public func append(_ revision: Revision) throws(RegistryError) -> Revision {
        try write { db in
            try db.execute(
                sql: """
                    INSERT INTO revision (appliedAt, specSHA256, specText, specFile, root, gitCommit, gitDirty, source, summary, schemaMatrix, node)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    revision.appliedAt, revision.specSHA256, revision.specText, revision.specFile, revision.root, revision.gitCommit,
                    revision.gitDirty, revision.source, revision.summary, revision.schemaMatrix, revision.node,
                ])
            var stored = revision
            stored.number = Int(db.lastInsertedRowID)
            try insertEvent(db, at: revision.appliedAt, kind: "revision", message: "revision \(stored.number) (\(revision.source)): \(revision.summary)")
            return stored
        }
    }

    /// All revisions, oldest first.
    public func revisions() throws(RegistryError) -> [Revision] {
        try read { db in try Row.fetchAll(db, sql: "SELECT * FROM revision ORDER BY number").map(Self.revision) }
    }

    /// Revision `number`, or nil.
    public func revision(_ number: Int) throws(RegistryError) -> Revision? {
        try read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM revision WHERE number = ?", arguments: [number]).map(Self.revision)
        }
    }

    /// The newest revision's number and spec digest, without its text, and SQLite's `data_version` (a cheap
    /// check for a new or changed revision).
    ///
    /// `dataVersion` changes whenever another connection (another process: `pmm apply`, or someone editing the
    /// file behind pmm's back) committed since the last call on this one; this registry's own writes leave it
    /// alone. A cache keyed by all three is parsed again after any outside change, and never otherwise.
    public func latestRevisionKey() throws(RegistryError) -> (number: Int, specSHA256: String, dataVersion: Int)? {
        try read { db in
            let dataVersion = try Int.fetchOne(db, sql: "PRAGMA data_version") ?? 0
            return try Row.fetchOne(db, sql: "SELECT number, specSHA256 FROM revision ORDER BY number DESC LIMIT 1").map {
                (number: $0["number"], specSHA256: $0["specSHA256"], dataVersion: dataVersion)
            }
        }
    }

    /// The newest revision, or nil before the first apply.
    public func latestRevision() throws(RegistryError) -> Revision? {
        try read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM revision ORDER BY number DESC LIMIT 1").map(Self.revision)
        }
    }

    static func revision(_ row: Row) -> Revision {
        Revision(
            number: row["number"], appliedAt: row["appliedAt"], specSHA256: row["specSHA256"],
            specText: row["specText"], specFile: row["specFile"], root: row["root"], gitCommit: row["gitCommit"],
            gitDirty: row["gitDirty"], source: row["source"], summary: row["summary"], schemaMatrix: row["schemaMatrix"], node: row["node"])
    }

    // MARK: Instances

    /// Records a registered instance (replacing an older registration of the same instance).
    public func register(_ instance: InstanceRecord) throws(RegistryError) {
        try write { db in
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO instance (
                        instance, service, pid, uid, registeredAt, lastHeartbeat, maxRate, ttlSeconds, heartbeatSeconds,
                        renewedAt, capacity, pidStartTime)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    instance.instance, instance.service, instance.pid, Int64(instance.uid), instance.registeredAt,
                    instance.lastHeartbeat, instance.maxRate, instance.ttlSeconds, instance.heartbeatSeconds, instance.renewedAt,
                    instance.capacity, Int64(bitPattern: instance.pidStartTime),
                ])
        }
    }

    /// Registered instances, by instance name.
    public func instances() throws(RegistryError) -> [InstanceRecord] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM instance ORDER BY instance").map {
                InstanceRecord(
                    instance: $0["instance"], service: $0["service"], pid: $0["pid"], uid: UInt32($0["uid"] as Int64),
                    registeredAt: $0["registeredAt"], lastHeartbeat: $0["lastHeartbeat"], maxRate: $0["maxRate"],
                    ttlSeconds: $0["ttlSeconds"], heartbeatSeconds: $0["heartbeatSeconds"], renewedAt: $0["renewedAt"],
                    capacity: $0["capacity"], pidStartTime: UInt64(bitPattern: $0["pidStartTime"] as Int64))
            }
        }
    }

    /// Removes a registration. Returns whether there was one.
    @discardableResult
    public func deregister(instance: String) throws(RegistryError) -> Bool {
        try write { db in
            try db.execute(sql: "DELETE FROM instance WHERE instance = ?", arguments: [instance])
            return db.changesCount > 0
        }
    }

    /// Renews `instance`'s lease at `renewedAt` (seconds since 1970); `interval`, when not nil, is the
    /// heartbeat interval promised from now on. Returns whether the instance was registered.
    @discardableResult
    public func heartbeat(instance: String, at: String, renewedAt: Double = 0, interval: Double? = nil) throws(RegistryError) -> Bool {
        try write { db in
            if let interval {
                try db.execute(
                    sql: "UPDATE instance SET lastHeartbeat = ?, renewedAt = ?, heartbeatSeconds = ? WHERE instance = ?",
                    arguments: [at, renewedAt, interval, instance])
            } else {
                try db.execute(
                    sql: "UPDATE instance SET lastHeartbeat = ?, renewedAt = ? WHERE instance = ?", arguments: [at, renewedAt, instance])
            }
            return db.changesCount > 0
        }
    }

    // MARK: Runtime routing rules

    public func setRoutingRule(_ rule: RoutingRule) throws(RegistryError) {
        try write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO routingRule (dataType, service, weight, setBy, at) VALUES (?, ?, ?, ?, ?)",
                arguments: [rule.dataType, rule.service, rule.weight, Int64(rule.setBy), rule.at])
            try insertEvent(
                db, at: rule.at, kind: "routing-rule", message: "uid \(rule.setBy) set \(rule.dataType) -> \(rule.service) weight \(rule.weight)")
        }
    }

    /// Runtime rules, oldest first.
    public func routingRules() throws(RegistryError) -> [RoutingRule] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM routingRule ORDER BY at, dataType, service").map {
                RoutingRule(
                    dataType: $0["dataType"], service: $0["service"], weight: $0["weight"], setBy: UInt32($0["setBy"] as Int64),
                    at: $0["at"])
            }
        }
    }

    /// Removes every runtime rule (an apply of a spec); returns them.
    @discardableResult
    public func clearRoutingRules() throws(RegistryError) -> [RoutingRule] {
        let rules = try routingRules()
        try write { db in try db.execute(sql: "DELETE FROM routingRule") }
        return rules
    }

    // MARK: Events

    /// Appends an event to the log (dropping the oldest beyond `maximumEvents`).
    public func event(kind: String, message: String, at: String) throws(RegistryError) {
        try write { db in try insertEvent(db, at: at, kind: kind, message: message) }
    }

    /// Inserts an event and, in the caller's transaction, deletes those older than the newest `maximumEvents`.
    /// Event ids only grow (AUTOINCREMENT), so the newest N are the ids above `last - N`: one range delete on
    /// the primary key, however long the log.
    func insertEvent(_ db: Database, at: String, kind: String, message: String) throws {
        try db.execute(sql: "INSERT INTO event (at, kind, message) VALUES (?, ?, ?)", arguments: [at, kind, message])
        try db.execute(sql: "DELETE FROM event WHERE id <= ?", arguments: [db.lastInsertedRowID - Int64(maximumEvents)])
    }

    /// How many events the log holds.
    public func eventCount() throws(RegistryError) -> Int {
        try read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM event") ?? 0 }
    }

    /// The newest events, newest last.
    public func events(limit: Int = 100) throws(RegistryError) -> [(at: String, kind: String, message: String)] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM (SELECT * FROM event ORDER BY id DESC LIMIT ?) ORDER BY id", arguments: [limit])
                .map { (at: $0["at"], kind: $0["kind"], message: $0["message"]) }
        }
    }
}
