use std::process::ExitCode;

/// jemalloc: the service allocates and frees small objects for every event on two or more
/// threads (the message copy, the request, hyper's and h2's frames); glibc's malloc spent
/// about a sixth of the service's CPU on it. mimalloc was as fast but held 15 MB more with a
/// stalled backlog; jemalloc is faster and holds less (README, Benchmark).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    recaptcha_annotator::cli::main()
}
