fn main() -> std::process::ExitCode {
    petrel_cli::main()
}
