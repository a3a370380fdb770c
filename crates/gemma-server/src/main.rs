fn main() {
    eprintln!("gemma-server: not built yet");
    std::process::exit(1);
}
