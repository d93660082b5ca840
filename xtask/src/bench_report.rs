//! BENCHMARKS.md, `benchmarks.svg` and the JSON they are drawn from, and the mutation score
//! section that `cargo xtask mutants` keeps in BENCHMARKS.md. Every file is written atomically.

use std::path::Path;

use serde_json::json;

use crate::measure::{Bench, Stats};
use crate::{target_dir, workspace_root, write_atomic, XtaskError};

/// Splits `text` into lines of at most `width` characters at spaces (a longer word gets a
/// line of its own): chart labels are wrapped, never cut.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart: one bar per ratio (kvmcap's median over the peer's) on a log axis with ticks,
/// parity (1.0) dashed; green bars to the left are where kvmcap is faster, red to the right
/// where it loses. Each bar carries a whisker from the best to the worst ratio the p10-p90
/// ranges allow (kvmcap p10 / peer p90 to kvmcap p90 / peer p10). Labels wrap to the chart's
/// width, never cut.
fn svg(benches: &[Bench]) -> String {
    struct Row {
        label: Vec<String>,
        ratio: f64,
        low: f64,
        high: f64,
    }
    let rows: Vec<Row> = benches
        .iter()
        .filter_map(|b| {
            let (k, p) = (b.kvmcap.as_ref()?, b.peer_stats.as_ref()?);
            let ratio = b.ratio().filter(|r| *r > 0.0 && r.is_finite())?;
            let (low, high) = (k.p10 / p.p90, k.p90 / p.p10);
            let ok = |v: f64| v > 0.0 && v.is_finite();
            Some(Row {
                label: wrap(&format!("{} vs {}", b.name, b.peer), 150),
                ratio,
                low: if ok(low) { low } else { ratio },
                high: if ok(high) { high } else { ratio },
            })
        })
        .collect();
    // The axis: whole decades around every ratio and whisker, at least 0.1 to 10.
    let lo = rows
        .iter()
        .map(|r| r.low.min(r.ratio))
        .fold(0.1f64, f64::min)
        .log10()
        .floor() as i32;
    let hi = rows
        .iter()
        .map(|r| r.high.max(r.ratio))
        .fold(10.0f64, f64::max)
        .log10()
        .ceil() as i32;
    let (left, right) = (40.0, 1060.0);
    let x = |v: f64| left + (right - left) * (v.log10() - f64::from(lo)) / f64::from(hi - lo);
    let row_h = |r: &Row| 34 + 14 * r.label.len();
    let top = 70;
    let h = top + rows.iter().map(row_h).sum::<usize>() + 20;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1100\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"1100\" height=\"{h}\" fill=\"#fff\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">kvmcap / peer: median ratio (bar) and the p10-p90 range (whisker), log scale; left of 1 kvmcap is faster</text>\n"
    );
    for d in lo..=hi {
        let v = 10f64.powi(d);
        let xv = x(v);
        s.push_str(&format!(
            "<line x1=\"{xv:.1}\" y1=\"45\" x2=\"{xv:.1}\" y2=\"{h}\" stroke=\"{}\"{}/>\n<text x=\"{xv:.1}\" y=\"40\" text-anchor=\"middle\">{}</text>\n",
            if d == 0 { "#333" } else { "#ddd" },
            if d == 0 { " stroke-dasharray=\"4\"" } else { "" },
            if d < 0 {
                format!("{v:.*}", d.unsigned_abs() as usize)
            } else {
                format!("{v:.0}")
            }
        ));
    }
    let mut y = top;
    for r in &rows {
        let (x1, xr) = (x(1.0), x(r.ratio));
        let (bx, bw) = if xr < x1 {
            (xr, x1 - xr)
        } else {
            (x1, xr - x1)
        };
        let mid = y + 9;
        // The ratio's text right of the whisker, or left of the bar near the right edge.
        let (tx, anchor) = if x(r.high).max(xr) + 8.0 > right - 160.0 {
            (x(r.low).min(xr).min(x1) - 8.0, " text-anchor=\"end\"")
        } else {
            (x(r.high).max(xr) + 8.0, "")
        };
        s.push_str(&format!(
            "<rect x=\"{bx:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"18\" fill=\"{}\"/>\n<line x1=\"{:.1}\" y1=\"{mid}\" x2=\"{:.1}\" y2=\"{mid}\" stroke=\"#222\"/>\n<line x1=\"{:.1}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\" stroke=\"#222\"/>\n<line x1=\"{:.1}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\" stroke=\"#222\"/>\n<text x=\"{:.1}\" y=\"{}\"{}>{}</text>\n",
            bw.max(1.0),
            if r.ratio <= 1.0 { "#3a7" } else { "#c64" },
            x(r.low),
            x(r.high),
            x(r.low),
            mid - 5,
            x(r.low),
            mid + 5,
            x(r.high),
            mid - 5,
            x(r.high),
            mid + 5,
            tx,
            y + 14,
            anchor,
            escape(&ratio_text(r.ratio))
        ));
        for (k, line) in r.label.iter().enumerate() {
            s.push_str(&format!(
                "<text x=\"10\" y=\"{}\">{}</text>\n",
                y + 32 + 14 * k,
                escape(line)
            ));
        }
        y += row_h(r);
    }
    s.push_str("</svg>\n");
    s
}

/// Redraws `benchmarks.svg` from a JSON file `cargo xtask bench` wrote (no measuring).
pub fn redraw(json_path: &Path) -> Result<usize, XtaskError> {
    let err = |problem: String| XtaskError::Output {
        path: json_path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(json_path).map_err(|e| err(e.to_string()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let stats = |v: &serde_json::Value| {
        Some(Stats {
            runs: usize::try_from(v["runs"].as_u64()?).ok()?,
            median: v["median_ms"].as_f64()?,
            p10: v["p10_ms"].as_f64()?,
            p90: v["p90_ms"].as_f64()?,
        })
    };
    let benches: Vec<Bench> = doc["benchmarks"]
        .as_array()
        .ok_or_else(|| err("no `benchmarks` list".into()))?
        .iter()
        .map(|b| Bench {
            name: b["name"].as_str().unwrap_or("").to_owned(),
            kvmcap: stats(&b["kvmcap"]),
            peer: b["peer"].as_str().unwrap_or("").to_owned(),
            peer_stats: stats(&b["peer_stats"]),
            note: b["note"].as_str().unwrap_or("").to_owned(),
        })
        .collect();
    write_atomic(
        &workspace_root().join("benchmarks.svg"),
        svg(&benches).as_bytes(),
    )?;
    Ok(benches.len())
}

/// A ratio as text; below 1, also how many times faster kvmcap was.
fn ratio_text(r: f64) -> String {
    if r < 1.0 && r > 0.0 {
        let times = 1.0 / r;
        if times < 10.0 {
            format!("{r:.3}x ({times:.1}x faster)")
        } else {
            format!("{r:.3}x ({times:.0}x faster)")
        }
    } else {
        format!("{r:.2}x")
    }
}

fn fmt(s: &Option<Stats>) -> String {
    match s {
        Some(s) if s.median < 1.0 => format!(
            "{:.1} µs ({:.1}–{:.1}), n={}",
            s.median * 1000.0,
            s.p10 * 1000.0,
            s.p90 * 1000.0,
            s.runs
        ),
        Some(s) => format!(
            "{:.1} ms ({:.1}–{:.1}), n={}",
            s.median, s.p10, s.p90, s.runs
        ),
        None => "not measured".into(),
    }
}

/// Writes BENCHMARKS.md, the chart and the JSON; returns the table.
pub fn write_report(benches: &[Bench], json_path: Option<&Path>) -> Result<String, XtaskError> {
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let doc = json!({
        "machine": {"cpu": machine, "cpus": cpus, "kernel": kernel.trim()},
        "benchmarks": benches.iter().map(Bench::json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    let json_out = json_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| target_dir().join("kvmcap/bench/bench.json"));
    write_atomic(&json_out, text.as_bytes())?;
    let mut table = String::from("| benchmark | kvmcap median (p10–p90) | peer | peer median (p10–p90) | ratio |\n|---|---|---|---|---|\n");
    for b in benches {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            b.name,
            fmt(&b.kvmcap),
            b.peer,
            fmt(&b.peer_stats),
            b.ratio().map_or("-".into(), ratio_text)
        ));
    }
    let mut md = format!(
        "# kvmcap benchmarks\n\nRegenerated by `cargo xtask bench` (this file, `benchmarks.svg` and {}). \
         Machine: {machine}, {cpus} CPUs, kernel {}. Absolute times on these shared machines are noisy: \
         read the ratios, measured in the same invocation.\n\n{table}\n![kvmcap / peer](benchmarks.svg)\n\n## Notes\n\n",
        json_out.strip_prefix(workspace_root()).unwrap_or(&json_out).display(),
        kernel.trim()
    );
    for b in benches {
        md.push_str(&format!("- **{}**: {}\n", b.name, b.note));
    }
    md.push_str(
        "\n## Caveats\n\n\
         - The QEMU peers of the bare probe run both vCPUs' reads on QEMU's boot CPU (the multiboot image starts no \
         application processors); QEMU still creates 2 vCPUs. `-cpu host,-arch-capabilities`: this host's KVM refuses \
         QEMU's write of IA32_ARCH_CAPABILITIES.\n\
         - The C floor runs its guest in real mode on one thread, vCPU after vCPU, and judges nothing; this host's KVM \
         emulates guest instructions, where real mode is cheaper per instruction than long mode.\n\
         - Lab figures come from QEMU TCG (emulated SVM): absolute times are the lab's; the ratios are the point.\n\
         - The cold edit loop removes the main line's source, patched copy, kernel build and selftest build under \
         `target/kernel/` (the downloaded Debian package and the Rust artifacts stay); `--quick` skips it.\n",
    );
    md.push_str(&mutation_section());
    write_atomic(&workspace_root().join("BENCHMARKS.md"), md.as_bytes())?;
    write_atomic(
        &workspace_root().join("benchmarks.svg"),
        svg(benches).as_bytes(),
    )?;
    Ok(table)
}

/// The section of BENCHMARKS.md that carries the score of the last `cargo xtask mutants`
/// (read from `kernel-patches/MUTANTS.md`), or nothing if it never ran.
pub fn mutation_section() -> String {
    let path = workspace_root().join("kernel-patches/MUTANTS.md");
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    match text.lines().find(|l| l.starts_with("**Score:")) {
        Some(score) => format!(
            "\n## Mutation score\n\n{score} `cargo xtask mutants`: mutants of the main line's PPIN \
             handlers, each built and run in the lab; every mutant and the check that killed it are in \
             `kernel-patches/MUTANTS.md`.\n"
        ),
        None => String::new(),
    }
}

/// BENCHMARKS.md's text with [`mutation_section`] in place of the previous one.
pub fn with_mutation_section(text: &str) -> String {
    let kept = match text.find("\n## Mutation score") {
        Some(i) => {
            let rest = &text[i + 1..];
            let end = rest.find("\n## ").map_or(text.len(), |j| i + 1 + j);
            format!("{}{}", &text[..i], &text[end..])
        }
        None => text.to_owned(),
    };
    format!(
        "{}{}",
        kept.trim_end_matches('\n').to_owned() + "\n",
        mutation_section()
    )
}

/// Puts [`mutation_section`] into BENCHMARKS.md in place of the previous one.
pub fn update_mutation_score() -> Result<(), XtaskError> {
    let path = workspace_root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    write_atomic(&path, with_mutation_section(&text).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mutation_section_is_replaced_not_repeated() {
        let text = "# b\n\n## Caveats\n\n- c\n\n## Mutation score\n\nold\n";
        let once = with_mutation_section(text);
        assert!(!once.contains("old"), "{once}");
        assert!(once.starts_with("# b\n\n## Caveats\n\n- c\n"), "{once}");
        assert_eq!(with_mutation_section(&once), once);
    }

    #[test]
    fn ratios_below_one_say_how_many_times_faster() {
        assert_eq!(ratio_text(0.5), "0.500x (2.0x faster)");
        assert_eq!(ratio_text(0.01), "0.010x (100x faster)");
        assert_eq!(ratio_text(2.0), "2.00x");
    }
}

#[cfg(test)]
mod svg_tests {
    use super::*;

    fn bench(name: &str, k: f64, p: f64) -> Bench {
        let st = |m: f64| Stats {
            runs: 10,
            median: m,
            p10: m * 0.9,
            p90: m * 1.2,
        };
        Bench {
            name: name.into(),
            kvmcap: Some(st(k)),
            peer: "a peer whose name is long enough that one line of the chart cannot hold it together with the benchmark's own long name".into(),
            peer_stats: Some(st(p)),
            note: String::new(),
        }
    }

    #[test]
    fn labels_are_whole_and_the_axis_has_ticks_and_whiskers() {
        let b = vec![
            bench(
                "edit loop: touch arch/x86/kvm/x86.c, then patch-boot-verify to a green table",
                5.0,
                100.0,
            ),
            bench("guest rdmsr", 12.0, 6.0),
        ];
        let s = svg(&b);
        // Every word of every label is drawn (wrapped, not cut).
        for x in &b {
            for w in format!("{} vs {}", x.name, x.peer).split_whitespace() {
                assert!(s.contains(&escape(w)), "missing {w}");
            }
        }
        for tick in [">0.01<", ">0.1<", ">1<", ">10<"] {
            assert!(s.contains(tick), "no tick {tick}");
        }
        // Bars, whisker lines and the parity line.
        assert_eq!(s.matches("<rect").count(), 1 + b.len());
        assert!(s.contains("stroke-dasharray"));
        assert!(s.matches("stroke=\"#222\"").count() >= 3 * b.len());
        for line in wrap(&format!("{} vs {}", b[0].name, b[0].peer), 150) {
            assert!(line.chars().count() <= 150);
        }
    }
}
