import Foundation

/// A task executor with a thread of its own. A test whose progress is timed (an app that reads at 100 messages/s,
/// a wait with a deadline) runs its tasks here with `withTaskExecutorPreference` or `Task(executorPreference:)`,
/// so they do not queue for the global cooperative pool: on a 2-core machine that pool has two threads, and in a
/// full run the synchronous tests hold them for minutes while they wait for their processes.
///
/// Jobs must not block for long: they share the one thread. Once `shutdown()` is called the thread runs what it
/// holds and ends; jobs that arrive later (a cancelled task winding down) go to the global executor.
final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []  // guarded by `condition`
    private var stopping = false  // guarded by `condition`

    init(_ name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        condition.lock()
        if stopping {
            condition.unlock()
            globalConcurrentExecutor.enqueue(job)
            return
        }
        jobs.append(UnownedJob(job))
        condition.signal()
        condition.unlock()
    }

    /// Ends the thread once it has run the jobs it holds.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            let batch = jobs
            jobs.removeAll()
            let last = stopping
            condition.unlock()
            for job in batch { job.runSynchronously(on: asUnownedTaskExecutor()) }
            if last && batch.isEmpty { return }
        }
    }
}

/// Runs `body` with its tasks on a thread of their own (a `ThreadExecutor` it is given): its own waits, and the
/// tasks it starts with `Task(executorPreference:)`. For async tests whose progress is timed.
func offThePool(_ name: String, _ body: (ThreadExecutor) async throws -> Void) async throws {
    let executor = ThreadExecutor(name)
    defer { executor.shutdown() }
    try await withTaskExecutorPreference(executor) { try await body(executor) }
}
