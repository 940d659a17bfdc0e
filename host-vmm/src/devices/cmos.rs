//! The MC146818 real-time clock and CMOS RAM at ports 0x70 (index) and 0x71 (data), as
//! a PC has them: a Linux guest reads the wall-clock time from it at boot (and warns of
//! an unknown port without it).
//!
//! The time registers always answer the host's current UTC time (the guest cannot set
//! the host clock: writes to them are ignored), in BCD or binary and 12- or 24-hour
//! form as the guest selects in status register B. Status A reports no update in
//! progress, D a valid time and RAM. Every other register is 128 bytes of plain RAM.
//! No alarm or periodic interrupt is raised (the guest has the local-APIC timer).

use super::{PioDevice, VmEvent};
use std::time::{SystemTime, UNIX_EPOCH};

/// The index port; the data port follows it.
pub const CMOS_BASE: u16 = 0x70;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;
/// Status B: 24-hour mode.
const B_24H: u8 = 1 << 1;
/// Status B: binary (not BCD) mode.
const B_BINARY: u8 = 1 << 2;

/// A calendar time, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Year, e.g. 2026.
    pub year: u32,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 1 (Sunday) ..= 7, the RTC's convention.
    pub weekday: u32,
}

impl DateTime {
    /// The UTC calendar time `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil-from-days (proleptic Gregorian), with eras of 400 years.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Self {
            year: u32::try_from(year).unwrap_or(u32::MAX),
            month: month as u32,
            day: day as u32,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            // 1970-01-01 was a Thursday (5 in the RTC's 1 = Sunday numbering).
            weekday: ((days + 4) % 7) as u32 + 1,
        }
    }
}

/// The clock source of the RTC.
pub type Clock = fn() -> u64;

fn host_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The RTC/CMOS device.
#[derive(Debug)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: Clock,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(host_clock)
    }
}

impl Cmos {
    /// An RTC reading the time from `clock` (seconds since the Unix epoch).
    pub fn with_clock(clock: Clock) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(STATUS_A)] = 0x26; // 32.768 kHz time base, 1024 Hz rate.
        ram[usize::from(STATUS_B)] = B_24H;
        Self {
            index: 0,
            ram,
            clock,
        }
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.ram[usize::from(STATUS_B)] & B_BINARY != 0 {
            v
        } else {
            (v / 10) << 4 | (v % 10)
        }
    }

    fn register(&self, index: u8) -> u8 {
        let t = || DateTime::from_unix((self.clock)());
        match index {
            SECONDS => self.encode(t().second),
            MINUTES => self.encode(t().minute),
            HOURS => {
                let h = t().hour;
                if self.ram[usize::from(STATUS_B)] & B_24H != 0 {
                    self.encode(h)
                } else {
                    let pm = if h >= 12 { 0x80 } else { 0 };
                    let h12 = match h % 12 {
                        0 => 12,
                        x => x,
                    };
                    self.encode(h12) | pm
                }
            }
            WEEKDAY => self.encode(t().weekday),
            DAY => self.encode(t().day),
            MONTH => self.encode(t().month),
            YEAR => self.encode(t().year % 100),
            CENTURY => self.encode(t().year / 100),
            // Update-in-progress is never set: the time is read atomically per register.
            STATUS_A => self.ram[usize::from(STATUS_A)] & 0x7f,
            // No interrupt flags are ever pending.
            STATUS_C => 0,
            // Valid RAM and time.
            STATUS_D => 0x80,
            i => self.ram[usize::from(i & 0x7f)],
        }
    }
}

impl PioDevice for Cmos {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let (1, Some(b)) = (offset, data.first_mut()) {
            *b = self.register(self.index);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        let v = *data.first()?;
        match offset {
            // Bit 7 is the NMI mask, not part of the index.
            0 => self.index = v & 0x7f,
            1 => match self.index {
                SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY | STATUS_C
                | STATUS_D => {}
                i => self.ram[usize::from(i)] = v,
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06 17:34:33 UTC, a Sunday.
    fn fixed() -> u64 {
        1_796_578_473
    }

    fn read(c: &mut Cmos, index: u8) -> u8 {
        c.write(0, &[index]);
        let mut b = [0];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn calendar_conversion() {
        let t = DateTime::from_unix(fixed());
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2026, 12, 6, 17, 34, 33, 1)
        );
        let epoch = DateTime::from_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 5)
        );
        // A leap day.
        let leap = DateTime::from_unix(951_782_400);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn the_guest_reads_the_host_time_in_bcd_24_hour_form() {
        let mut c = Cmos::with_clock(fixed);
        assert_eq!(read(&mut c, SECONDS), 0x33);
        assert_eq!(read(&mut c, MINUTES), 0x34);
        assert_eq!(read(&mut c, HOURS), 0x17);
        assert_eq!(read(&mut c, DAY), 0x06);
        assert_eq!(read(&mut c, MONTH), 0x12);
        assert_eq!(read(&mut c, YEAR), 0x26);
        assert_eq!(read(&mut c, CENTURY), 0x20);
        assert_eq!(read(&mut c, WEEKDAY), 0x01);
        assert_eq!(read(&mut c, STATUS_A) & 0x80, 0, "no update in progress");
        assert_eq!(read(&mut c, STATUS_D), 0x80, "valid time");
        // The NMI-mask bit is not part of the index.
        assert_eq!(read(&mut c, 0x80 | SECONDS), 0x33);
    }

    #[test]
    fn binary_and_12_hour_modes_follow_status_b() {
        let mut c = Cmos::with_clock(fixed);
        c.write(0, &[STATUS_B]);
        c.write(1, &[B_BINARY]);
        assert_eq!(read(&mut c, SECONDS), 33);
        assert_eq!(read(&mut c, HOURS), 0x80 | 5, "5 pm");
        c.write(0, &[STATUS_B]);
        c.write(1, &[B_BINARY | B_24H]);
        assert_eq!(read(&mut c, HOURS), 17);
    }

    #[test]
    fn the_guest_cannot_set_the_clock_but_keeps_its_ram() {
        let mut c = Cmos::with_clock(fixed);
        c.write(0, &[SECONDS]);
        c.write(1, &[0x59]);
        assert_eq!(read(&mut c, SECONDS), 0x33);
        c.write(0, &[0x40]);
        c.write(1, &[0xab]);
        assert_eq!(read(&mut c, 0x40), 0xab);
        // Odd sizes and the index port read all ones; nothing panics.
        let mut b = [0u8; 4];
        c.read(0, &mut b);
        assert_eq!(b, [0xff; 4]);
        c.write(1, &[]);
    }
}
