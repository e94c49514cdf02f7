"""The entrypoint's side of the process tree: the supervisor that starts and watches the
model workers and Granian (`supervisor`), its watchdog (`watchdog`), and the run
directory's files that the three processes share (`rundir`, the only module of this
package the HTTP side and the workers import)."""
