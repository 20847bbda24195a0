//! AFL++ target: [`shoal_fuzz::eureka_register`].
fn main() {
    afl::fuzz!(|data: &[u8]| shoal_fuzz::eureka_register(data));
}
