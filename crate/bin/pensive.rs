//! The `pensive` command-line tool: generate, score and benchmark natively.
//!
//! Every subcommand goes through `pensive::engine::Engine`, the same code the browser runs.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use clap::{Args, Parser, Subcommand, ValueEnum};
    use pensive::backend::{block_on, Backend};
    use pensive::chat::{Message, TemplateVariables};
    use pensive::engine::{
        AnyBackend, BackendChoice, Continuation, Engine, EngineError, EngineLoader, GenerateRequest, LoadOptions, Prompt,
    };
    use pensive::generate::{Event, Stats};
    use pensive::loader;
    use pensive::thinking::{ContinuationOrder, EarlyEnd, Phase, ThinkingOptions};
    use pensive::tokenizer::Tokenizer;

    #[derive(Parser)]
    #[command(name = "pensive", version, about = "Quantized Llama/Qwen2/Qwen3 models with thinking budgets")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Generate a response (streams text; --json prints one object at the end).
        Generate(GenerateArgs),
        /// Teacher-force a continuation after the prompt and rate each token.
        Score(ScoreArgs),
        /// Measure prefill and decode speed.
        Bench(BenchArgs),
    }

    #[derive(Args)]
    struct ModelArgs {
        /// A .gguf file, or a folder with config.json + *.safetensors (+ tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// tokenizer.json (optional for GGUF, which carries its vocabulary).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// KV cache capacity in tokens.
        #[arg(long)]
        max_context: Option<usize>,
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum BackendArg {
        Auto,
        Gpu,
        Cpu,
    }

    #[derive(Args)]
    struct PromptArgs {
        /// Raw prompt text (no chat template; BOS only if the model's metadata asks for it).
        #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
        prompt: Option<String>,
        /// One user message, rendered through the model's chat template.
        #[arg(long)]
        chat: Option<String>,
        /// A system message to put before --chat.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// Special-token texts in --prompt ("<|im_start|>") become those tokens (a prompt
        /// that writes the chat format itself). Message text never does.
        #[arg(long, requires = "prompt")]
        special_tokens: bool,
    }

    #[derive(Args)]
    struct GenerateArgs {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(long)]
        temperature: Option<f32>,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        top_p: Option<f32>,
        #[arg(long)]
        min_p: Option<f32>,
        #[arg(long)]
        repeat_penalty: Option<f32>,
        #[arg(long)]
        seed: Option<u64>,
        /// Stop when the answer contains this text (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Let --stop end the generation inside thinking too.
        #[arg(long)]
        stop_in_thinking: bool,
        #[command(flatten)]
        thinking: ThinkingArgs,
        /// Extra chat template variables, a JSON object: '{"enable_thinking": false}' makes
        /// Qwen3's template skip thinking (vLLM's chat_template_kwargs). Used with --chat;
        /// a raw --prompt has no template.
        #[arg(long, value_parser = template_kwargs)]
        chat_template_kwargs: Option<TemplateVariables>,
        /// Print one JSON object {prompt_ids, tokens, text, events, stats} instead of streaming.
        #[arg(long)]
        json: bool,
    }

    fn template_kwargs(json: &str) -> Result<TemplateVariables, String> {
        serde_json::from_str(json).map_err(|e| format!("not a JSON object: {e}"))
    }

    #[derive(Args)]
    struct ThinkingArgs {
        /// Minimum thinking tokens: earlier ends of thinking are replaced by a continuation.
        #[arg(long)]
        think_min: Option<usize>,
        /// Maximum thinking tokens: thinking is then closed by force.
        #[arg(long)]
        think_max: Option<usize>,
        /// Continuation text inserted instead of an early end (repeatable; default "Wait").
        #[arg(long = "continue")]
        continuations: Vec<String>,
        #[arg(long, value_parser = ["cycle", "random"])]
        continuation_order: Option<String>,
        /// Replace the first K natural ends of thinking too (s1's thinking_n_ignore).
        #[arg(long)]
        ignore_ends: Option<usize>,
        #[arg(long)]
        max_continuations: Option<usize>,
        #[arg(long, value_parser = ["continue", "suppress"])]
        on_early_end: Option<String>,
        /// Tokens allowed past the cap to reach a sentence end.
        #[arg(long)]
        grace_tokens: Option<usize>,
        #[arg(long)]
        wrap_up: Option<String>,
        #[arg(long)]
        answer_prefix: Option<String>,
        #[arg(long)]
        answer_max_tokens: Option<usize>,
        #[arg(long)]
        think_start: Option<String>,
        #[arg(long)]
        think_end: Option<String>,
        /// Open thinking at the start of the response (for templates that do not).
        #[arg(long)]
        think_open: bool,
    }

    impl ThinkingArgs {
        /// `None` when no thinking flag was given: no budget control at all.
        fn options(&self) -> Option<ThinkingOptions> {
            let any = self.think_min.is_some()
                || self.think_max.is_some()
                || !self.continuations.is_empty()
                || self.continuation_order.is_some()
                || self.ignore_ends.is_some()
                || self.max_continuations.is_some()
                || self.on_early_end.is_some()
                || self.grace_tokens.is_some()
                || self.wrap_up.is_some()
                || self.answer_prefix.is_some()
                || self.answer_max_tokens.is_some()
                || self.think_start.is_some()
                || self.think_end.is_some()
                || self.think_open;
            if !any {
                return None;
            }
            let d = ThinkingOptions::default();
            Some(ThinkingOptions {
                min_tokens: self.think_min.unwrap_or(d.min_tokens),
                max_tokens: self.think_max.or(d.max_tokens),
                continuations: if self.continuations.is_empty() { d.continuations } else { self.continuations.clone() },
                continuation_order: match self.continuation_order.as_deref() {
                    Some("random") => ContinuationOrder::Random,
                    _ => ContinuationOrder::Cycle,
                },
                ignore_ends: self.ignore_ends.unwrap_or(d.ignore_ends),
                max_continuations: self.max_continuations.or(d.max_continuations),
                on_early_end: match self.on_early_end.as_deref() {
                    Some("suppress") => EarlyEnd::Suppress,
                    _ => EarlyEnd::Continue,
                },
                grace_tokens: self.grace_tokens.unwrap_or(d.grace_tokens),
                wrap_up: self.wrap_up.clone(),
                answer_prefix: self.answer_prefix.clone(),
                answer_max_tokens: self.answer_max_tokens,
                start: self.think_start.clone(),
                end: self.think_end.clone(),
                open: self.think_open,
                ..d
            })
        }
    }

    #[derive(Args)]
    struct ScoreArgs {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        /// Continuation token ids, comma-separated.
        #[arg(long, value_delimiter = ',', conflicts_with = "continuation", required_unless_present = "continuation")]
        continuation_ids: Option<Vec<u32>>,
        /// Continuation text (tokenized without BOS).
        #[arg(long)]
        continuation: Option<String>,
        #[arg(long)]
        json: bool,
    }

    #[derive(Args)]
    struct BenchArgs {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Measure this many rounds (after one warm-up) and report the fastest.
        #[arg(long, default_value_t = 1)]
        repeats: usize,
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let result = match cli.command {
            Command::Generate(a) => generate(a),
            Command::Score(a) => score(a),
            Command::Bench(a) => bench(a),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pensive: error [{}]: {e}", e.code());
                ExitCode::FAILURE
            }
        }
    }

    /// The backend options of the flags (and the CPU thread pool, before anything uses it).
    fn load_options(args: &ModelArgs) -> LoadOptions {
        if let Some(n) = args.threads {
            // Only fails if the pool was already built, which cannot happen this early.
            let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        }
        let backend = match args.backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Gpu => BackendChoice::Gpu,
            BackendArg::Cpu => BackendChoice::Cpu,
        };
        LoadOptions { backend, max_context: args.max_context }
    }

    /// A GGUF file streamed through the engine loader in chunks, as the browser streams a
    /// download: the backend is decided from its header and, on WebGPU, each tensor is
    /// uploaded as it completes.
    fn gguf_loader(args: &ModelArgs, options: &LoadOptions) -> Result<EngineLoader, EngineError> {
        let mut loader = block_on(EngineLoader::new(options))?;
        loader.push_file(&args.model)?;
        Ok(loader)
    }

    fn load(args: &ModelArgs) -> Result<Engine, EngineError> {
        let io = |p: &Path, e: std::io::Error| EngineError::Load(loader::LoadError::Io(format!("{}: {e}", p.display())));
        let options = load_options(args);
        let tokenizer_path = args.tokenizer.clone().or_else(|| {
            let p = args.model.join("tokenizer.json");
            (args.model.is_dir() && p.exists()).then_some(p)
        });
        let tokenizer = match tokenizer_path {
            Some(p) => {
                let json = std::fs::read(&p).map_err(|e| io(&p, e))?;
                let config_path = p.with_file_name("tokenizer_config.json");
                let config = std::fs::read(&config_path).ok();
                Some(Tokenizer::from_json(&json, config.as_deref())?)
            }
            None => None,
        };
        if args.model.is_dir() {
            // A safetensors folder is read whole; the backend decision is the same.
            return block_on(Engine::new(loader::load_safetensors_dir(&args.model)?, tokenizer, &options));
        }
        gguf_loader(args, &options)?.finish(tokenizer)
    }

    fn prompt(args: &PromptArgs) -> Prompt {
        match (&args.prompt, &args.chat) {
            (Some(p), _) => Prompt::Text(p.clone()),
            (None, chat) => {
                let mut messages = Vec::new();
                if let Some(s) = &args.system {
                    messages.push(Message { role: "system".into(), content: s.clone() });
                }
                messages.push(Message { role: "user".into(), content: chat.clone().unwrap_or_default() });
                Prompt::Messages(messages)
            }
        }
    }

    fn generate(a: GenerateArgs) -> Result<(), EngineError> {
        let mut engine = load(&a.model)?;
        let request = GenerateRequest {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            repeat_last_n: None,
            seed: a.seed,
            logit_bias: Default::default(),
            logprobs: false,
            top_logprobs: None,
            max_tokens: Some(a.max_tokens),
            stop: a.stop.clone(),
            stop_in_thinking: a.stop_in_thinking,
            thinking: a.thinking.options(),
            chat_template_kwargs: a.chat_template_kwargs.clone(),
            special_tokens_in_text: a.prompt.special_tokens,
        };
        let prompt = prompt(&a.prompt);
        let prompt_ids = engine.prompt_ids_with(&prompt, a.chat_template_kwargs.as_ref(), a.prompt.special_tokens)?;
        engine.start(&prompt, request)?;
        let mut events = Vec::new();
        let (mut tokens, mut text, mut stats) = (Vec::new(), String::new(), Stats::default());
        let mut out = std::io::stdout().lock();
        // Thinking is shown dim, forced insertions in reverse video (only on a terminal).
        let styled = std::io::IsTerminal::is_terminal(&out);
        let mut phase = None;
        while let Some(event) = block_on(engine.next_event())? {
            match &event {
                Event::Token { id, text: piece, phase: p, forced, .. } => {
                    tokens.push(*id);
                    text.push_str(piece);
                    if !a.json {
                        if styled {
                            let dim = if *p == Phase::Thinking { "\x1b[2m" } else { "" };
                            let inv = if *forced { "\x1b[7m" } else { "" };
                            let _ = write!(out, "{dim}{inv}{piece}\x1b[0m");
                        } else if *forced && phase.is_some() {
                            let _ = write!(out, "[{piece}]");
                        } else {
                            let _ = write!(out, "{piece}");
                        }
                        let _ = out.flush();
                    }
                }
                Event::Phase { phase: p } => phase = Some(*p),
                Event::Done { stats: s } => stats = s.clone(),
                _ => {}
            }
            events.push(event);
        }
        let info = engine.info()?;
        if a.json {
            let json = serde_json::json!({
                "prompt_ids": prompt_ids, "tokens": tokens, "text": text, "events": events, "stats": stats,
                "backend": info.backend, "fallback_reason": info.fallback_reason,
            });
            let _ = writeln!(out, "{json}");
        } else {
            let _ = writeln!(out);
            eprintln!(
                "[{} prompt, {} sampled, {} forced tokens; thinking {}, answer {}; {} continuations; \
                 prefill {:.1} tok/s, decode {:.1} tok/s; {}{}]",
                stats.prompt_tokens,
                stats.sampled_tokens,
                stats.forced_tokens,
                stats.thinking_tokens,
                stats.answer_tokens,
                stats.continuations,
                stats.prefill_tok_s,
                stats.decode_tok_s,
                info.backend,
                info.fallback_reason.map(|why| format!(" (not WebGPU: {why})")).unwrap_or_default(),
            );
        }
        Ok(())
    }

    fn score(a: ScoreArgs) -> Result<(), EngineError> {
        let mut engine = load(&a.model)?;
        let continuation = match (&a.continuation_ids, &a.continuation) {
            (Some(ids), _) => Continuation::Ids(ids.clone()),
            (None, text) => Continuation::Text(text.clone().unwrap_or_default()),
        };
        let result = block_on(engine.score(&prompt(&a.prompt), &continuation))?;
        if a.json {
            println!("{}", serde_json::to_string(&result).unwrap_or_default());
        } else {
            for p in &result.positions {
                let text = engine.tokenizer().decode(&[p.id]);
                println!("{:>8} {:<20?} logprob {:>9.4}  argmax {:>8}  margin {:.3}", p.id, text, p.logprob, p.argmax, p.margin);
            }
            println!("nll {:.4}  perplexity {:.3}", result.nll, result.perplexity);
        }
        Ok(())
    }

    fn bench(a: BenchArgs) -> Result<(), EngineError> {
        // The backend alone: fixed synthetic ids, greedy, no tokenizer or sampler.
        let t0 = std::time::Instant::now();
        let options = load_options(&a.model);
        let mut backend = if a.model.model.is_dir() {
            block_on(AnyBackend::new(loader::load_safetensors_dir(&a.model.model)?, &options))?
        } else {
            gguf_loader(&a.model, &options)?.finish_backend()?.0
        };
        let load_s = t0.elapsed().as_secs_f64();
        let vocab = backend.config().vocab_size as u32;
        let prompt: Vec<u32> = (0..a.prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
        // One round: prefill from an empty cache, then greedy decode steps (argmax on the
        // backend, as generation does when nothing is sampled).
        let mut round = || -> Result<(f64, Vec<f64>), EngineError> {
            backend.truncate(0)?;
            let t = std::time::Instant::now();
            let mut next = block_on(backend.forward_greedy(&prompt, &[]))?;
            let prefill_s = t.elapsed().as_secs_f64();
            let mut steps = Vec::with_capacity(a.gen_tokens);
            for _ in 0..a.gen_tokens {
                let t = std::time::Instant::now();
                next = block_on(backend.forward_greedy(&[next], &[]))?;
                steps.push(t.elapsed().as_secs_f64());
            }
            Ok((prefill_s, steps))
        };
        if a.repeats > 1 {
            round()?; // warm-up: first-use costs (pipeline compilation, page faults)
        }
        let mut best: Option<(f64, Vec<f64>)> = None;
        for _ in 0..a.repeats.max(1) {
            let (p, steps) = round()?;
            best = Some(match best {
                None => (p, steps),
                Some((bp, bs)) => {
                    let s = if steps.iter().sum::<f64>() < bs.iter().sum::<f64>() { steps } else { bs };
                    (bp.min(p), s)
                }
            });
        }
        let (prefill_s, mut steps) = best.unwrap_or_default();
        let decode_s: f64 = steps.iter().sum();
        steps.sort_by(|x, y| x.total_cmp(y));
        let median = steps.get(steps.len() / 2).copied().unwrap_or(0.0);
        let json = serde_json::json!({
            "model": a.model.model.display().to_string(),
            "backend": backend.name(),
            "fallback_reason": backend.fallback_reason(),
            "load_s": load_s,
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "repeats": a.repeats,
            "prefill_s": prefill_s,
            "prefill_tok_s": a.prompt_tokens as f64 / prefill_s,
            "decode_s": decode_s,
            "decode_tok_s": a.gen_tokens as f64 / decode_s,
            "decode_step_ms_median": median * 1e3,
            "peak_rss_mb": peak_rss_mb(),
        });
        println!("{json}");
        Ok(())
    }

    /// Peak resident memory of this process (Linux), in MiB.
    fn peak_rss_mb() -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}
