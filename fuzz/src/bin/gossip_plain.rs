//! AFL++ target: [`shoal_fuzz::gossip_plain`].
fn main() {
    afl::fuzz!(|data: &[u8]| shoal_fuzz::gossip_plain(data));
}
