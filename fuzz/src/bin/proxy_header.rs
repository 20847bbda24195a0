//! AFL++ target: [`shoal_fuzz::proxy_header`].
fn main() {
    afl::fuzz!(|data: &[u8]| shoal_fuzz::proxy_header(data));
}
