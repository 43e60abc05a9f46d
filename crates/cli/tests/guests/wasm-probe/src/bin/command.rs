//! A wasi:cli/command component: a program with a main, not an HTTP handler.
fn main() {
    println!("I am a command, not a proxy");
}
