//! AFL++ target: [`shoal_fuzz::route`].
fn main() {
    afl::fuzz!(|data: &[u8]| shoal_fuzz::route(data));
}
