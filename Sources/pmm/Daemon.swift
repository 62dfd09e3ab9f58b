import Dispatch
import Foundation
import Logging
import PMMSystem
import ServiceLifecycle
import Synchronization
import UnixSignals

/// A blocking loop (the router's epoll loop, the control server's poll loop) run as a swift-service-lifecycle
/// `Service`.
///
/// The loop keeps a thread of its own: it blocks in epoll_wait(2) or poll(2) and must not hold one of the cooperative pool's few
/// threads. The service turns graceful shutdown (SIGTERM, SIGINT, through the `ServiceGroup`) into `.stop` and
/// SIGHUP (a `UnixSignalsSequence`) into `.reload` on the loop's `SignalPipe`, which the loop waits on with its
/// pipes; the loop itself stays the single-threaded hot path it was.
final class PollLoopService<Outcome: Sendable>: Service {
    let name: String
    let signals: SignalPipe
    let loop: @Sendable (SignalPipe) -> Outcome
    let outcome = Mutex<Outcome?>(nil)

    init(name: String, signals: SignalPipe, loop: @escaping @Sendable (SignalPipe) -> Outcome) {
        self.name = name
        self.signals = signals
        self.loop = loop
    }

    func run() async throws {
        let signals = self.signals
        let loop = self.loop
        await withGracefulShutdownHandler {
            // Trapped before the loop starts, so a SIGHUP sent once the loop says it serves is never lost.
            let hangups = await UnixSignalsSequence(trapping: .sighup)
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await _ in hangups { signals.send(.reload) }
                }
                let result: Outcome = await withCheckedContinuation { continuation in
                    let thread = Thread { continuation.resume(returning: loop(signals)) }
                    thread.name = self.name
                    thread.start()
                }
                self.outcome.withLock { $0 = result }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            signals.send(.stop)
        }
    }
}

/// Runs `loop` as the one service of a `ServiceGroup` that shuts down gracefully on SIGTERM and SIGINT, and
/// returns what the loop returned.
///
/// The commands stay synchronous (every other command keeps running on the main thread, with the signal mask
/// `main` set up): the group runs in a task while the main thread waits for it.
func runDaemon<Outcome: Sendable>(name: String, logger: Logger, loop: @escaping @Sendable (SignalPipe) -> Outcome) throws -> Outcome? {
    let service = PollLoopService(name: name, signals: SignalPipe(handlingSignals: false), loop: loop)
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    let failure = Mutex<(any Error)?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        do { try await group.run() } catch { failure.withLock { $0 = error } }
        done.signal()
    }
    done.wait()
    if let error = failure.withLock({ $0 }) { throw error }
    return service.outcome.withLock { $0 }
}

/// Hands a value that only one thread uses at a time across an isolation boundary (the router and the control
/// server: created here, then used only by their loop's thread).
struct Handed<Value>: @unchecked Sendable {
    let value: Value
}
