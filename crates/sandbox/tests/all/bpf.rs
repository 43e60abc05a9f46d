//! A classic-BPF interpreter for seccomp programs, to ask a filter read back from the kernel
//! what it answers a system call, and the kernel's rule for several filters: the most severe
//! answer wins.

pub const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;

#[cfg(target_arch = "x86_64")]
pub const NATIVE_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
pub const NATIVE_ARCH: u32 = 0xC000_00B7;

/// `struct seccomp_data`: the call's number, the architecture, the instruction pointer and six
/// arguments, as the kernel lays it out.
fn seccomp_data(arch: u32, nr: i64, args: [u64; 6]) -> Vec<u8> {
    let mut d = Vec::with_capacity(64);
    d.extend_from_slice(&(nr as i32).to_ne_bytes());
    d.extend_from_slice(&arch.to_ne_bytes());
    d.extend_from_slice(&0u64.to_ne_bytes());
    for a in args {
        d.extend_from_slice(&a.to_ne_bytes());
    }
    d
}

/// What one program returns for the call.
pub fn run(program: &[libc::sock_filter], data: &[u8]) -> u32 {
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let word = |k: u32| -> u32 {
        let k = k as usize;
        u32::from_ne_bytes(
            data[k..k + 4]
                .try_into()
                .expect("an aligned load inside seccomp_data"),
        )
    };
    loop {
        let f = program.get(pc).expect("the program runs off its end");
        pc += 1;
        let code = f.code as u32;
        let src = if code & 0x08 != 0 { x } else { f.k };
        match code & 0x07 {
            // BPF_LD
            0x00 => match code & 0xe0 {
                0x20 => a = word(f.k),         // BPF_ABS (words only in seccomp)
                0x00 => a = f.k,               // BPF_IMM
                0x60 => a = mem[f.k as usize], // BPF_MEM
                0x80 => a = data.len() as u32, // BPF_LEN
                m => panic!("unknown load mode {m:#x}"),
            },
            // BPF_LDX
            0x01 => match code & 0xe0 {
                0x00 => x = f.k,
                0x60 => x = mem[f.k as usize],
                0x80 => x = data.len() as u32,
                m => panic!("unknown ldx mode {m:#x}"),
            },
            0x02 => mem[f.k as usize] = a, // BPF_ST
            0x03 => mem[f.k as usize] = x, // BPF_STX
            // BPF_ALU
            0x04 => {
                a = match code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 => a / src,
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.wrapping_shl(src),
                    0x70 => a.wrapping_shr(src),
                    0x80 => a.wrapping_neg(),
                    0x90 => a % src,
                    0xa0 => a ^ src,
                    op => panic!("unknown alu op {op:#x}"),
                }
            }
            // BPF_JMP
            0x05 => {
                let taken = match code & 0xf0 {
                    0x00 => {
                        pc += f.k as usize; // BPF_JA
                        continue;
                    }
                    0x10 => a == src,
                    0x20 => a > src,
                    0x30 => a >= src,
                    0x40 => a & src != 0,
                    op => panic!("unknown jump {op:#x}"),
                };
                pc += if taken { f.jt } else { f.jf } as usize;
            }
            // BPF_RET
            0x06 => return if code & 0x18 == 0x10 { a } else { f.k },
            // BPF_MISC
            0x07 => {
                if code & 0xf8 == 0x00 {
                    x = a; // TAX
                } else {
                    a = x; // TXA
                }
            }
            _ => unreachable!(),
        }
    }
}

/// What the kernel answers for the call under all `programs`: each runs, and the answer whose
/// action is the most severe (the lowest as a signed number) wins.
pub fn verdict(programs: &[Vec<libc::sock_filter>], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
    let data = seccomp_data(arch, nr, args);
    let mut best = SECCOMP_RET_ALLOW;
    for p in programs {
        let ret = run(p, &data);
        if ((ret & SECCOMP_RET_ACTION_FULL) as i32) < ((best & SECCOMP_RET_ACTION_FULL) as i32) {
            best = ret;
        }
    }
    best
}
