//! AFL++ target: [`shoal_fuzz::gossip_sealed`].
fn main() {
    afl::fuzz!(|data: &[u8]| shoal_fuzz::gossip_sealed(data));
}
