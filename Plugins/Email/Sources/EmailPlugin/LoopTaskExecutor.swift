import NIOCore

/// Runs a task's jobs on one NIO event loop (the task's executor preference), so that the sink's sender
/// does not wait for a thread of the process's shared pool: the hub's own work, or anything that blocks
/// one of that pool's threads (two on this two-core machine), held mails back. Tests that waited on the
/// pool's threads while an e-mail test ran kept its mail from being sent for more than ten seconds.
final class LoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
