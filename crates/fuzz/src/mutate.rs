//! Byte-level mutations, stacked 1 to 8 at a time, over inputs taken from
//! the corpus: bit flips, bytes that matter to the parsers (quotes, escapes,
//! separators, control characters), tokens of each target's dictionary,
//! numbers at the edges, deletions, duplications and splices.

use ha_sim::rng::Rng;

const INTERESTING_BYTES: &[u8] = b"\0\n\r\t '\"\\:{}[]%&=?/#,-.\x7f\xff\x80";
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "9223372036854775807",
    "18446744073709551616",
    "1e308",
    "1e309",
    "-0",
    "0x7fffffffffffffff",
    "NaN",
    "inf",
    "99999999999999999999999999999",
];

pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], dictionary: &[&[u8]], max_len: usize) {
    let rounds = 1 << rng.range(0, 3);
    for _ in 0..rounds {
        let len = input.len();
        match rng.pick(10) {
            0 if len > 0 => {
                let at = rng.pick(len);
                input[at] ^= 1 << rng.range(0, 7);
            }
            1 if len > 0 => {
                let at = rng.pick(len);
                input[at] = INTERESTING_BYTES[rng.pick(INTERESTING_BYTES.len())];
            }
            2 | 3 if !dictionary.is_empty() => {
                let token = dictionary[rng.pick(dictionary.len())];
                let at = rng.pick(len + 1);
                if rng.chance(50) || len == at {
                    input.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    input.splice(at..end, token.iter().copied());
                }
            }
            4 if len > 0 => {
                let at = rng.pick(len);
                let n = 1 + rng.pick((len - at).min(32));
                input.drain(at..at + n);
            }
            5 if len > 0 => {
                let at = rng.pick(len);
                let n = 1 + rng.pick((len - at).min(64));
                let copy: Vec<u8> = input[at..at + n].to_vec();
                let to = rng.pick(len + 1);
                let most = if rng.chance(10) { 64 } else { 3 };
                let times = 1 + rng.pick(most);
                for _ in 0..times {
                    input.splice(to..to, copy.iter().copied());
                }
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.pick(corpus.len())];
                if !other.is_empty() {
                    let from = rng.pick(other.len());
                    let at = rng.pick(len + 1);
                    input.truncate(at);
                    input.extend_from_slice(&other[from..]);
                }
            }
            7 => {
                let number = INTERESTING_NUMBERS[rng.pick(INTERESTING_NUMBERS.len())].as_bytes();
                match input.iter().position(|b| b.is_ascii_digit()).map(|first| {
                    let skip = rng.pick(len - first);
                    (first..len).skip(skip).find(|&i| input[i].is_ascii_digit()).unwrap_or(first)
                }) {
                    Some(start) => {
                        let end = (start..len).find(|&i| !input[i].is_ascii_digit()).unwrap_or(len);
                        input.splice(start..end, number.iter().copied());
                    }
                    None => {
                        let at = rng.pick(len + 1);
                        input.splice(at..at, number.iter().copied());
                    }
                }
            }
            _ => {
                let at = rng.pick(len + 1);
                let n = 1 + rng.pick(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
    }
    input.truncate(max_len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_length_bound_and_change_the_input() {
        let mut rng = Rng::new(7);
        let corpus = vec![b"GET /primary HTTP/1.1\r\n\r\n".to_vec()];
        let mut changed = 0;
        for _ in 0..10_000 {
            let mut input = corpus[0].clone();
            mutate(&mut rng, &mut input, &corpus, &[b"Content-Length: "], 64);
            assert!(input.len() <= 64);
            changed += usize::from(input != corpus[0]);
        }
        assert!(changed > 9_000, "{changed} of 10000 inputs changed");
    }
}
