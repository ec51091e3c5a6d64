use std::time::Instant;
fn varz(port: u16) -> (u64, u64) {
    let out = std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/varz")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["in_msgs"].as_u64().unwrap(),
        v["out_msgs"].as_u64().unwrap(),
    )
}
fn cpu_ns(pid: &str) -> u64 {
    let mut t = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let p = e.unwrap().path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(p) {
            t += s.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        }
    }
    t
}
fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL")?;
    let mport: u16 = std::env::var("MPORT")?.parse()?;
    let client = natty::ConnectOptions::new([url.as_str()]).connect().await?;
    let kv = natty::Kv::new(client.clone());
    let _ = kv.delete_bucket("probe").await;
    kv.create_bucket(natty::BucketConfig::new("probe")).await?;
    let js = async_nats::jetstream::new(client.nats().clone());
    let store = js.get_key_value("probe").await?;
    const N: usize = 10000;
    for round in 0..3 {
        let spid = std::env::var("SPID")?;
        let (c0, s0) = (cpu_ns("self"), cpu_ns(&spid));
        let (i0, o0) = varz(mport);
        let mut t = Vec::new();
        for i in 0..N {
            let s = Instant::now();
            kv.put("probe", &format!("k{}", i % 100), "value".into())
                .await?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let (i1, o1) = varz(mport);
        let (c1, s1) = (cpu_ns("self"), cpu_ns(&spid));
        let natty = p50(t);
        let mut t = Vec::new();
        for i in 0..N {
            let s = Instant::now();
            store.put(format!("k{}", i % 100), "value".into()).await?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let (i2, o2) = varz(mport);
        let (c2, s2) = (cpu_ns("self"), cpu_ns(&spid));
        println!(
            "cpu per put: client natty {:.1} us raw {:.1} us; server natty {:.1} us raw {:.1} us",
            (c1 - c0) as f64 / N as f64 / 1e3,
            (c2 - c1) as f64 / N as f64 / 1e3,
            (s1 - s0) as f64 / N as f64 / 1e3,
            (s2 - s1) as f64 / N as f64 / 1e3
        );
        let raw = p50(t);
        println!(
            "round {round}: put p50 natty {natty:.1} us raw {raw:.1} us ratio {:.3}; server in/out msgs per put: natty {:.2}/{:.2} raw {:.2}/{:.2}",
            natty / raw,
            (i1 - i0) as f64 / N as f64,
            (o1 - o0) as f64 / N as f64,
            (i2 - i1) as f64 / N as f64,
            (o2 - o1) as f64 / N as f64
        );
        let mut t = Vec::new();
        for i in 0..N {
            let s = Instant::now();
            kv.get("probe", &format!("k{}", i % 100)).await?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let natty = p50(t);
        let mut t = Vec::new();
        for i in 0..N {
            let s = Instant::now();
            store.entry(format!("k{}", i % 100)).await?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let raw = p50(t);
        let stream = js.get_stream("KV_probe").await?;
        let mut t = Vec::new();
        for i in 0..N {
            let s = Instant::now();
            kv.refresh("probe", &format!("k{}", i % 100)).await?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let nr = p50(t);
        let mut t = Vec::new();
        for i in 0..N {
            let k = format!("k{}", i % 100);
            let s = Instant::now();
            let e = store.entry(&k).await?.unwrap();
            store.update(&k, e.value, e.revision).await?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let rr = p50(t);
        let mut t = Vec::new();
        for i in 0..N {
            let k = format!("k{}", i % 100);
            let s = Instant::now();
            let m = stream
                .get_last_raw_message_by_subject(&format!("$KV.probe.{k}"))
                .await?;
            store.update(&k, m.payload, m.sequence).await?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let rl = p50(t);
        let mut t = Vec::new();
        for i in 0..N {
            let k = format!("k{}", i % 100);
            let s = Instant::now();
            let e = store.entry(&k).await?.unwrap();
            let mut h = async_nats::HeaderMap::new();
            h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                e.revision.to_string().as_str(),
            );
            h.insert("Nats-Msg-Id", client.nats().new_inbox().as_str());
            js.publish_with_headers(format!("$KV.probe.{k}"), h, e.value)
                .await?
                .await?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        let rm = p50(t);
        println!(
            "round {round}: refresh p50 natty {nr:.1} raw(direct get+update) {rr:.1} ratio {:.3}; raw(leader get+update) {rl:.1} ({:.3}); raw(direct get+update with msg id) {rm:.1} ({:.3})",
            nr / rr,
            rl / rr,
            rm / rr
        );
        println!(
            "round {round}: get p50 natty {natty:.1} us raw {raw:.1} us ratio {:.3}",
            natty / raw
        );
    }
    Ok(())
}
