/// Which router worker (thread) routes which data type, and each worker's share of a layout.
///
/// Workers share nothing: a data type's ingress pipes, its egress pipes and its route belong to one worker,
/// so every egress pipe has exactly one writer (frames never interleave), a key's frames go through one
/// worker in the order they were read, and each at-least-once spool has one owner. The unit of sharing is
/// the data type because any ingress pipe of a type can route to any egress pipe of it; a finer split would
/// put two writers on one egress pipe.
///
/// A type keeps its worker for the life of the assignment, across reloads, even after a revision removes it:
/// if it came back on another worker while the first still drained its pipes, two workers would read one
/// FIFO. New types go to the worker that reads the fewest ingress pipes.
public struct WorkerAssignment: Hashable, Sendable {
    public let workers: Int
    /// The worker of every type seen so far.
    public private(set) var owners: [String: Int] = [:]

    public init(workers: Int) {
        precondition(workers >= 1, "a router needs at least one worker")
        self.workers = workers
    }

    /// How many workers a router should run for `layout`: `requested` (nil: one per core, `cores`), no more
    /// than the data types it routes, and one for a multi-node mesh, whose links one worker owns.
    public static func workers(requested: Int?, cores: Int, for layout: RouterLayout) -> Int {
        if !layout.peers.isEmpty { return 1 }
        let types = Set(layout.ingress.map(\.dataType)).count
        return max(1, min(requested ?? max(1, cores), types))
    }

    /// The worker that routes `dataType` (a type never assigned: worker 0).
    public func owner(of dataType: String) -> Int { owners[dataType] ?? 0 }

    /// Assigns every type of `layout` that has no worker yet and returns each worker's share, in worker order.
    /// Each share holds its types' ingress and egress pipes and routes (egress indices renumbered), and only
    /// worker 0's keeps the mesh's nodes and links.
    ///
    /// - Parameter alsoTypes: types the layout does not name that need a worker all the same: those of spools
    ///   left for pipes no revision names any more. The worker that adopts such a spool must be the one the
    ///   type comes back to, or two workers would hold one spool file.
    public mutating func split(_ layout: RouterLayout, alsoTypes: Set<String> = []) -> [RouterLayout] {
        var pipes: [String: Int] = [:]
        for pipe in layout.ingress { pipes[pipe.dataType, default: 0] += 1 }
        let types = Set(pipes.keys).union(layout.egress.map(\.dataType)).union(layout.routes.keys).union(alsoTypes)
        var load = [Int](repeating: 0, count: workers)
        for (type, count) in pipes { if let worker = owners[type] { load[worker] += count } }
        let fresh = types.filter { owners[$0] == nil }.sorted { (pipes[$0] ?? 0, $1) > (pipes[$1] ?? 0, $0) }
        for type in fresh {
            let worker = load.indices.min { (load[$0], $0) < (load[$1], $1) }!
            owners[type] = worker
            load[worker] += pipes[type] ?? 0
        }
        return (0..<workers).map { share(of: layout, worker: $0) }
    }

    func share(of layout: RouterLayout, worker: Int) -> RouterLayout {
        var part = layout
        part.ingress = layout.ingress.filter { owner(of: $0.dataType) == worker }
        var renumbered: [Int: Int] = [:]
        part.egress = []
        for (index, pipe) in layout.egress.enumerated() where owner(of: pipe.dataType) == worker {
            renumbered[index] = part.egress.count
            part.egress.append(pipe)
        }
        part.routes = layout.routes.filter { owner(of: $0.key) == worker }.mapValues { route in
            var route = route
            route.egressIndex = route.egressIndex.map { $0.map { renumbered[$0] ?? -1 } }
            return route
        }
        if worker != 0 {
            part.peers = []
            part.address = nil
            part.linkTLS = nil
        }
        return part
    }
}
