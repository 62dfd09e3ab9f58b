import Foundation
import Glibc
import PMMRegistry
import PipeMesh
import Testing

/// Leases from the client library's side, and a registry made before leases existed.
@Suite(.enabled(if: isRoot, "needs root to run services as their own uids"), .serialized)
struct LeaseClientTests {
    @Test func sendHeartbeats_inATask_keepTheLease_untilTheTaskIsCancelled() async throws {
        try await offThePool("heartbeats") { executor in
            let c = try ControlHarness(leasedMesh())
            let registration = try PipeMesh(stateDirectory: c.mesh.dir.path + "/state").register(service: "collector")
            let beating = Task(executorPreference: executor) { try await registration.sendHeartbeats(every: 0.2) }
            // The task starts on this test's own thread (offThePool) once this body waits without holding it.
            for _ in 0..<1000 where (try? c.query("select heartbeatSeconds from instance")) != ["0.2"] {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(try c.query("select heartbeatSeconds from instance") == ["0.2"], "each heartbeat promises the next")
            // Seven intervals, without them the lease would have ended. This wait blocks the thread the task
            // started on, on purpose: once started, the beats must need no executor.
            usleep(1_500_000)
            #expect(c.leases == [registration.instance])
            beating.cancel()
            let outcome = await beating.result
            #expect(throws: CancellationError.self) { try outcome.get() }
            try waitFor("three missed heartbeats", timeout: 5) { c.leases.isEmpty }
            #expect(c.serveLog.contains("lease-expired: \(registration.instance): three heartbeats missed (promised every 0.2s)"))
        }
    }

    @Test func aRegistryFromBeforeLeases_migrates_andItsRegistrationsLiveWithTheirProcess() throws {
        // A registry as the previous release left it (migrations v1 to v3), with one registration of this process.
        let dir = TemporaryDirectory()
        let path = dir.path + "/registry.sqlite"
        let script = """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1])
            db.executescript('''
            CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY);
            INSERT INTO grdb_migrations VALUES ('v1'), ('v2: instances and runtime routing rules'),
                ('v3: the schema compatibility matrix of each revision');
            CREATE TABLE revision (number INTEGER PRIMARY KEY AUTOINCREMENT, appliedAt TEXT NOT NULL,
                specSHA256 TEXT NOT NULL, specText TEXT NOT NULL, specFile TEXT NOT NULL, root TEXT NOT NULL,
                gitCommit TEXT, gitDirty INTEGER, source TEXT NOT NULL, summary TEXT NOT NULL, schemaMatrix TEXT);
            CREATE TABLE inventory (name TEXT PRIMARY KEY, kind TEXT NOT NULL, dataType TEXT NOT NULL,
                uid INTEGER NOT NULL, gid INTEGER NOT NULL, mode INTEGER NOT NULL, pipeSize INTEGER,
                device INTEGER NOT NULL, inode INTEGER NOT NULL);
            CREATE TABLE event (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL,
                message TEXT NOT NULL);
            CREATE TABLE instance (instance TEXT PRIMARY KEY, service TEXT NOT NULL, pid INTEGER NOT NULL,
                uid INTEGER NOT NULL, registeredAt TEXT NOT NULL, lastHeartbeat TEXT NOT NULL,
                maxRate INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE routingRule (dataType TEXT NOT NULL, service TEXT NOT NULL, weight INTEGER NOT NULL,
                setBy INTEGER NOT NULL, at TEXT NOT NULL, PRIMARY KEY (dataType, service));
            ''')
            db.execute("INSERT INTO instance VALUES ('collector-0', 'collector', ?, 1002, 't', 't', 0)", (int(sys.argv[2]),))
            db.commit()
            """
        let made = try run("/usr/bin/python3", ["-c", script, path, "\(getpid())"])
        try #require(made.status == 0, "\(made.stderr)")
        let registry = try Registry(path: path)
        let record = try #require(try registry.instances().first)
        #expect(record.instance == "collector-0" && record.pid == getpid())
        #expect(record.ttlSeconds == 0 && record.heartbeatSeconds == 0 && record.capacity == 0 && record.pidStartTime == 0)
        #expect(record.leaseEnd(now: Date().timeIntervalSince1970, processAlive: true) == nil, "no ttl, no heartbeats: it lives with its process")
        #expect(record.leaseEnd(now: 0, processAlive: false) == .processGone(pid: getpid()))
    }
}
