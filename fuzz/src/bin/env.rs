//! AFL++ target: [`shoal_fuzz::env`].
fn main() {
    afl::fuzz!(|data: &[u8]| shoal_fuzz::env(data));
}
