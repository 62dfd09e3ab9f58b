import PMMCore
import PMMSpecYAML
import Testing

/// The split of a layout among router workers (`pmm router --workers`): by data type, balanced by ingress
/// pipes, and sticky across reloads.
@Suite struct WorkerAssignmentTests {
    /// `orders`: 2 producers × 3 shards = 6 ingress pipes; `logs`: 1 × 2; `clicks`: 1 × 1; `audit`: consumed only.
    static func spec(withClicks: Bool = true, views: Bool = false) -> MeshSpec {
        let yaml = """
            apiVersion: pmm/v1
            kind: Mesh
            name: split
            root: /split
            dataTypes:
              orders: {shards: 3}
              logs: {shards: 2}
            \(withClicks ? "  clicks: {}\n" : "")\(views ? "  views: {shards: 4}\n" : "")  audit: {}
            services:
            \(views ? "  viewer: {uid: 0, produces: [{dataType: views}]}\n" : "")
              shop: {uid: 0, produces: [{dataType: orders}, {dataType: logs}]}
              cart: {uid: 0, produces: [{dataType: orders}\(withClicks ? ", {dataType: clicks}" : "")]}
              billing: {uid: 0, replicas: 3, consumes: [{dataType: orders}, {dataType: audit}]}
              search: {uid: 0, replicas: 2, consumes: [{dataType: logs}\(withClicks ? ", {dataType: clicks}" : "")]}
            routes:
              orders: {policy: shard, targets: [{service: billing}]}

            """
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "split.yaml")
        precondition(!result.diagnostics.hasErrors, "\(result.diagnostics.map(\.summary))")
        return result.spec!
    }

    static func layout(_ spec: MeshSpec = spec(), revision: Int = 1) -> RouterLayout {
        RouterLayout(spec: spec, revision: revision)
    }

    @Test func shares_holdEveryPipeOnce_withEachTypesPipesAndRouteTogether() {
        let full = Self.layout()
        var assignment = WorkerAssignment(workers: 2)
        let shares = assignment.split(full)
        #expect(shares.count == 2)
        #expect(shares.flatMap(\.ingress.names).sorted() == full.ingress.names.sorted())
        #expect(shares.flatMap(\.egress.names).sorted() == full.egress.names.sorted())
        #expect(shares.flatMap(\.routes.keys).sorted() == full.routes.keys.sorted())
        for (worker, share) in shares.enumerated() {
            for pipe in share.ingress { #expect(assignment.owner(of: pipe.dataType) == worker) }
            for pipe in share.egress { #expect(assignment.owner(of: pipe.dataType) == worker) }
            for (type, route) in share.routes {
                #expect(assignment.owner(of: type) == worker)
                // Renumbered indices name the same pipes as the full layout's.
                let names = route.egressIndex.map { $0.map { $0 < 0 ? "-" : share.egress[$0].name } }
                let fullNames = full.routes[type]!.egressIndex.map { $0.map { $0 < 0 ? "-" : full.egress[$0].name } }
                #expect(names == fullNames, "\(type)")
                #expect(!names.joined().isEmpty)
            }
            #expect(share.revision == full.revision)
            #expect(share.root == full.root)
        }
    }

    @Test func types_areBalancedByIngressPipes() {
        var assignment = WorkerAssignment(workers: 2)
        let shares = assignment.split(Self.layout())
        // orders (6 pipes) alone on one worker; logs (2), clicks (1) and audit (0) on the other.
        #expect(shares.map(\.ingress.count).sorted() == [3, 6])
        #expect(assignment.owner(of: "orders") != assignment.owner(of: "logs"))
        #expect(assignment.owner(of: "logs") == assignment.owner(of: "clicks"))
        // Deterministic: the same layout splits the same way.
        var again = WorkerAssignment(workers: 2)
        _ = again.split(Self.layout())
        #expect(again == assignment)
    }

    @Test func aType_keepsItsWorker_acrossReloads_evenWhenRemovedAndAddedBack() {
        var assignment = WorkerAssignment(workers: 3)
        _ = assignment.split(Self.layout())
        let first = assignment.owners
        // clicks goes away, then a new type arrives, then clicks comes back.
        _ = assignment.split(Self.layout(Self.spec(withClicks: false), revision: 2))
        #expect(assignment.owners == first)
        let shares = assignment.split(Self.layout(Self.spec(withClicks: false, views: true), revision: 3))
        for (type, worker) in first { #expect(assignment.owners[type] == worker, "\(type)") }
        let views = assignment.owner(of: "views")
        #expect(shares[views].ingress.contains { $0.dataType == "views" })
        _ = assignment.split(Self.layout(revision: 4))
        #expect(assignment.owner(of: "clicks") == first["clicks"])
    }

    @Test func aTypeKnownOnlyFromAnOrphanSpool_getsItsWorkerNow_andKeepsItWhenTheTypeComesBack() {
        // `clicks` left a spool behind, and the revision the router starts with no longer has it.
        var assignment = WorkerAssignment(workers: 2)
        let shares = assignment.split(Self.layout(Self.spec(withClicks: false)), alsoTypes: ["clicks"])
        let adopter = try! #require(assignment.owners["clicks"])
        #expect(!shares[adopter].ingress.contains { $0.dataType == "clicks" })
        // It comes back in a reload: to the worker that adopted its spool, and to no other.
        let back = assignment.split(Self.layout(revision: 2))
        #expect(assignment.owner(of: "clicks") == adopter)
        #expect(back[adopter].ingress.contains { $0.dataType == "clicks" })
        #expect(!back[1 - adopter].ingress.contains { $0.dataType == "clicks" })
    }

    @Test func workerCount_isCappedByTypes_andIsOneAcrossNodes() {
        let full = Self.layout()
        #expect(WorkerAssignment.workers(requested: nil, cores: 2, for: full) == 2)
        #expect(WorkerAssignment.workers(requested: 8, cores: 2, for: full) == 3)  // three types have ingress
        #expect(WorkerAssignment.workers(requested: 1, cores: 8, for: full) == 1)
        #expect(WorkerAssignment.workers(requested: nil, cores: 8, for: full) == 3)
        var linked = full
        linked.peers = [MeshNode(name: "b", address: "10.0.0.2:7946")]
        #expect(WorkerAssignment.workers(requested: 4, cores: 4, for: linked) == 1)
        var empty = full
        empty.ingress = []
        #expect(WorkerAssignment.workers(requested: 4, cores: 4, for: empty) == 1)
    }

    @Test func onlyWorkerZero_keepsTheLinks() {
        var linked = Self.layout()
        linked.peers = [MeshNode(name: "b", address: "10.0.0.2:7946")]
        linked.address = "10.0.0.1:7946"
        var assignment = WorkerAssignment(workers: 2)
        let shares = assignment.split(linked)
        #expect(shares[0].peers == linked.peers && shares[0].address == linked.address)
        #expect(shares[1].peers.isEmpty && shares[1].address == nil)
    }
}

extension Array where Element == RouterLayout.Ingress {
    var names: [String] { map(\.name) }
}

extension Array where Element == RouterLayout.Egress {
    var names: [String] { map(\.name) }
}
