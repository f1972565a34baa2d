//! Single-machine baseline: a task's model (TinyCNN) on all of its training images (60 000 for
//! MNIST and Fashion-MNIST), with or without DP-SGD, through the same `fit`/`evaluate` the
//! clients use, evaluated on its test images after every epoch. `--task fashion-mnist` for the
//! second task.
//!
//! ```text
//! cargo run -p learning --release --bin central -- --epochs 10                      # no DP
//! cargo run -p learning --release --bin central -- --dp --target-epsilon 3 --epochs 40 \
//!     --batch-size 1024 --lr 4 --max-grad-norm 1
//! ```
//! The last line is `accuracy=<test accuracy> epsilon=<ε or none>`.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use learning::parallel::Threads;
use learning::{
    Batching, ClientPrivacy, DpSgdConfig, Optimizer, TrainConfig, accountant, evaluate, fit_with,
};

/// mimalloc, as in every native training binary: glibc's malloc hands a step's large buffers
/// back to the kernel and faults them in again at the next step (BENCHMARKS.md, issue 17).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    about = "Central (non-federated) training of a task's model, with or without DP-SGD",
    args_override_self = true
)]
struct Args {
    /// The task (learning::task): mnist or fashion-mnist.
    #[arg(long, default_value = "mnist")]
    task: String,
    /// Epochs over the 60 000 training images.
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    /// (Expected) batch size; with DP the Poisson rate is batch_size / training images.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// SGD momentum (0 = plain SGD).
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Train with DP-SGD.
    #[arg(long)]
    dp: bool,
    /// Per-example clipping norm C.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Noise multiplier σ (or give --target-epsilon).
    #[arg(long)]
    noise_multiplier: Option<f32>,
    /// Solve σ so that ε after all epochs is at most this.
    #[arg(long)]
    target_epsilon: Option<f64>,
    /// δ of the guarantee.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Decay the learning rate along a cosine from --lr to 0 over the epochs (per epoch).
    #[arg(long)]
    cosine: bool,
    /// The model's two convolutions' channels, e.g. 32,64 (default: the task's registered
    /// model, 16,32 for TinyCNN): to measure a larger model at the same ε.
    #[arg(long, value_delimiter = ',')]
    conv_channels: Option<Vec<usize>>,
    /// Seed of the model initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads sharing each step (its batch cut into slices; the noise drawn once per step).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let registered = learning::task::find(&args.task)?;
    let task = &match args.conv_channels.as_deref() {
        Some(&[c1, c2]) if c1 > 0 && c2 > 0 => registered.with_conv_channels([c1, c2]),
        Some(other) => {
            anyhow::bail!("--conv-channels is {other:?}: expected two counts above 0, e.g. 32,64")
        }
        None => *registered,
    };
    let data = task
        .load_default()
        .with_context(|| format!("loading {}", task.name))?;
    let n = data.train.len();
    let mut config = TrainConfig {
        local_epochs: 1,
        batching: Batching::BatchSize(args.batch_size),
        learning_rate: args.lr,
        optimizer: Optimizer::Sgd {
            momentum: args.momentum,
        },
        dp: None,
    };
    if args.dp {
        let q = config.sample_rate(n);
        let steps = args.epochs as u64 * config.steps_per_epoch(n);
        let sigma = match (args.noise_multiplier, args.target_epsilon) {
            (Some(s), _) => s,
            (None, Some(target)) => {
                // Round up so the f32 σ still meets the target.
                let s = accountant::noise_multiplier_for(target, q, steps, args.delta)?;
                ((s * 1e4).ceil() / 1e4) as f32
            }
            (None, None) => anyhow::bail!("--dp needs --noise-multiplier or --target-epsilon"),
        };
        config.dp = Some(DpSgdConfig {
            max_grad_norm: args.max_grad_norm,
            noise_multiplier: sigma,
            delta: args.delta,
            distributed: None,
        });
    }
    config.validate(n)?;
    println!("config: {args:?}");
    println!(
        "model: {} parameters, layout {}",
        task.num_params(),
        task.model_signature()
    );
    println!(
        "train config: {config:?}, sample rate {:.6}, {} steps/epoch",
        config.sample_rate(n),
        config.steps_per_epoch(n)
    );

    let device = burn::tensor::Device::flex();
    device.seed(args.seed);
    let mut params = task.model().init(&device).to_flat();
    let mut privacy = ClientPrivacy::new(None, args.delta)?;
    let start = Instant::now();
    let mut last = None;
    // Kept across epochs: its threads start once.
    let mut threads = Threads::new(args.threads);
    for epoch in 1..=args.epochs {
        if args.cosine {
            let progress = (epoch - 1) as f32 / args.epochs as f32;
            config.learning_rate = args.lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
        }
        let res = fit_with(
            task,
            &params,
            &config,
            &data.train,
            &mut privacy,
            &mut threads,
            &mut |p| {
                if p.step % 20 == 0 || p.step + 1 == p.steps_per_epoch {
                    let done = (p.step + 1) as f64 / p.steps_per_epoch as f64;
                    let bar = "#".repeat((done * 30.0) as usize);
                    eprint!(
                        "\repoch {epoch:3}/{} [{bar:<30}] {:5.1}% loss {:.3}  ",
                        args.epochs,
                        done * 100.0,
                        p.batch_loss
                    );
                    std::io::stderr().flush().ok();
                }
            },
        )?;
        let delta = res
            .update
            .delta()
            .context("central training is local DP-SGD: a parameter delta")?;
        params.iter_mut().zip(delta).for_each(|(p, u)| *p += u);
        let eval = evaluate(task, &params, &data.test)?;
        eprint!("\r");
        println!(
            "epoch {epoch:3}  train loss {:.4}  test loss {:.4}  test accuracy {:.2}%  epsilon {}  elapsed {:.0}s",
            res.metrics.loss,
            eval.loss,
            eval.accuracy * 100.0,
            res.metrics
                .epsilon
                .map_or("none".into(), |e| format!("{e:.3}")),
            start.elapsed().as_secs_f64()
        );
        last = Some((eval.accuracy, res.metrics.epsilon));
    }
    let (acc, eps) = last.context("--epochs must be at least 1")?;
    println!(
        "accuracy={acc:.4} epsilon={}",
        eps.map_or("none".into(), |e| format!("{e:.4}"))
    );
    Ok(())
}
