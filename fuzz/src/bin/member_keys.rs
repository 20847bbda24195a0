//! AFL++ target: [`shoal_fuzz::member_keys`].
fn main() {
    afl::fuzz!(|data: &[u8]| shoal_fuzz::member_keys(data));
}
