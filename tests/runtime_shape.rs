//! `runtime: per_thread`: the accept loops and the connections they accept run on the
//! per-thread runtimes given to the app, not on the runtime that runs the app (the control
//! plane), and the drain ends them.
mod common;

use common::*;
use proxyd::app::{App, Start};
use proxyd::server::Shape;
use tokio::runtime::Handle;

/// `n` current-thread runtimes, each on a thread of its own until `stop` turns true.
fn per_thread(
    n: usize,
) -> (
    Vec<Handle>,
    Vec<std::thread::JoinHandle<()>>,
    tokio::sync::watch::Sender<bool>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        handles.push(rt.handle().clone());
        let mut stopped = stopped.clone();
        threads.push(std::thread::spawn(move || {
            rt.block_on(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
        }));
    }
    (handles, threads, stop)
}

fn alive(handles: &[Handle]) -> Vec<usize> {
    handles
        .iter()
        .map(|h| h.metrics().num_alive_tasks())
        .collect()
}

#[tokio::test]
async fn per_thread_runtimes_accept_and_serve_the_connections() {
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml_to(&[backend.addr], "")).unwrap();
    let loaded = proxyd::config::load_file(&path).unwrap();
    let (handles, threads, stop_threads) = per_thread(2);
    let mut start = Start {
        shape: Shape::Threads(handles.clone()),
        ..Default::default()
    };
    let app = App::start(&loaded, &mut start).unwrap();
    let addr = app.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = H1::connect(addr).await;
        let got = c.get(&format!("/{i}")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-echo-uri"), Some(format!("/{i}").as_str()));
        clients.push(c);
    }
    // Each runtime runs an accept loop, and the 8 open connections are tasks on them (with
    // the pooled upstream connections, one or two here as the requests came one by one).
    let per = alive(&handles);
    assert!(per.iter().all(|n| *n >= 1), "an idle runtime: {per:?}");
    assert!(per.iter().sum::<usize>() >= 2 + 8, "{per:?}");
    drop(clients);
    let _ = stop.send(());
    done.await.unwrap().unwrap();
    // Drained: the accept loops are gone, nothing accepts any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let _ = stop_threads.send(true);
    for t in threads {
        t.join().unwrap();
    }
}
