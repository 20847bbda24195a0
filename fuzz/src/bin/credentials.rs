//! AFL++ target: [`shoal_fuzz::credentials`].
fn main() {
    afl::fuzz!(|data: &[u8]| shoal_fuzz::credentials(data));
}
