//! The userfaultfd events the kernel sends the page server (`struct uffd_msg` of
//! `linux/userfaultfd.h`), decoded: a fault, a fork, a mremap, an munmap or discard.

use overboot_checkpoint::pagemap::PAGE_SIZE;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;
/// `sizeof(struct uffd_msg)`.
pub(crate) const MSG_SIZE: usize = 32;

/// A userfaultfd event, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Fault(u64),
    Fork(i32),
    Remap { from: u64, to: u64, len: u64 },
    Drop { start: u64, end: u64 },
    Other(u8),
}

impl Event {
    /// Decodes one `struct uffd_msg`.
    pub(crate) fn decode(msg: &[u8; MSG_SIZE]) -> Event {
        let word = |at: usize| u64::from_ne_bytes(msg[at..at + 8].try_into().unwrap_or([0; 8]));
        match msg[0] {
            UFFD_EVENT_PAGEFAULT => Event::Fault(word(16) & !(PAGE_SIZE - 1)),
            UFFD_EVENT_FORK => Event::Fork(i32::from_ne_bytes(
                msg[8..12].try_into().unwrap_or([0xff; 4]),
            )),
            UFFD_EVENT_REMAP => Event::Remap {
                from: word(8),
                to: word(16),
                len: word(24),
            },
            UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => Event::Drop {
                start: word(8),
                end: word(16),
            },
            other => Event::Other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_from_the_kernel_layout() {
        let mut msg = [0u8; MSG_SIZE];
        msg[0] = UFFD_EVENT_PAGEFAULT;
        msg[16..24].copy_from_slice(&0x7f00_1234u64.to_ne_bytes());
        assert_eq!(Event::decode(&msg), Event::Fault(0x7f00_1000));
        msg[0] = UFFD_EVENT_FORK;
        msg[8..12].copy_from_slice(&9i32.to_ne_bytes());
        assert_eq!(Event::decode(&msg), Event::Fork(9));
        msg[0] = UFFD_EVENT_REMAP;
        msg[8..16].copy_from_slice(&1u64.to_ne_bytes());
        msg[16..24].copy_from_slice(&2u64.to_ne_bytes());
        msg[24..32].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(
            Event::decode(&msg),
            Event::Remap {
                from: 1,
                to: 2,
                len: 3
            }
        );
        msg[0] = UFFD_EVENT_UNMAP;
        assert_eq!(Event::decode(&msg), Event::Drop { start: 1, end: 2 });
        msg[0] = 0x99;
        assert_eq!(Event::decode(&msg), Event::Other(0x99));
    }
}
