//! The `meterline` binary: parses the command line and reports errors in one line.

use std::process::ExitCode;

// Every stage allocates per record (JSON values, keys, outputs); mimalloc's
// thread-local free lists cost less than glibc malloc here (the end-to-end
// benchmark in the README measures it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match meterline::cli::main() {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of causes joined, as scripts and humans want it.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("meterline: error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
