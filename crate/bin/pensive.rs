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
    use pensive::backend::{block_on, Backend, SampleRequest};
    use pensive::sampler::{sample_with_uniform, Sampler, SamplerError, SamplerOptions};
    use pensive::chat::{Message, TemplateVariables};
    use pensive::engine::{
        AnyBackend, BackendChoice, Continuation, Engine, EngineError, EngineLoader, GenerateRequest, LoadOptions, Prompt,
    };
    use pensive::generate::{Event, Stats};
    use pensive::loader;
    use pensive::quant::CpuKernels;
    use pensive::eval;
    use pensive::thinking::{Phase, ThinkingOptions};
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
        /// Thinking policies x budgets on the project's problem set: s1's Control, Scaling,
        /// Performance per policy.
        Eval(EvalArgs),
    }

    #[derive(Args)]
    struct EvalArgs {
        /// GGUF files (repeatable).
        #[arg(long, required = true)]
        model: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        max_context: Option<usize>,
        /// Presets to compare, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "s1,qwen3,nowait,deer,alphaone")]
        policies: Vec<String>,
        /// Another policy, `LABEL=JSON` (thinking options, a preset among them if wanted),
        /// e.g. 'deer-para={"preset":"deer","confidence_exit":{"triggers":["Wait","\n\n"]}}'
        /// (repeatable; run after --policies).
        #[arg(long, value_parser = labelled_policy)]
        policy: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
        /// Thinking budgets (max_tokens), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,64,256")]
        budgets: Vec<usize>,
        /// Thinking floor as a fraction of each budget (min_tokens = floor × budget): s1's
        /// forcing in both directions. 0 = a cap only.
        #[arg(long, default_value_t = 0.0)]
        floor: f64,
        /// How many problems (the generator's first N).
        #[arg(long, default_value_t = 60)]
        problems: usize,
        /// Problem generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Thinking options as JSON applied over every preset (the budget goes over them). The
        /// default opens thinking for templates that do not and starts every answer with
        /// s1's "Final Answer:" and a `\boxed{`, so that a small model answers at once.
        #[arg(long, value_parser = json_object, default_value = eval::DEFAULT_THINKING)]
        thinking: serde_json::Map<String, serde_json::Value>,
        /// Print {results, summaries} as JSON.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print one CSV line per run.
        #[arg(long)]
        csv: bool,
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
        /// CPU backend kernels: int8 (8-bit activations and integer dot products, as
        /// llama.cpp: faster decode) or f32 (the reference).
        #[arg(long, value_enum, default_value = "int8")]
        cpu_kernels: CpuKernelsArg,
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum CpuKernelsArg {
        Int8,
        F32,
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum BackendArg {
        Auto,
        Gpu,
        Cpu,
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum ContextFillArg {
        #[value(name = "self")]
        Itself,
        Cpu,
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum RunAheadArg {
        Auto,
        On,
        Off,
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

    /// Every flag serializes under its ThinkingOptions field name, and only when given: the
    /// flags' layer of [`ThinkingArgs::options`].
    #[derive(Args, serde::Serialize)]
    struct ThinkingArgs {
        /// Minimum thinking tokens: earlier ends of thinking are replaced by a continuation.
        #[arg(long)]
        #[serde(rename = "min_tokens", skip_serializing_if = "Option::is_none")]
        think_min: Option<usize>,
        /// Maximum thinking tokens: thinking is then closed by force.
        #[arg(long)]
        #[serde(rename = "max_tokens", skip_serializing_if = "Option::is_none")]
        think_max: Option<usize>,
        /// Continuation text inserted instead of an early end (repeatable; default "Wait").
        #[arg(long = "continue")]
        #[serde(skip_serializing_if = "Vec::is_empty")]
        continuations: Vec<String>,
        #[arg(long, value_parser = ["cycle", "random"])]
        #[serde(skip_serializing_if = "Option::is_none")]
        continuation_order: Option<String>,
        /// Replace the first K natural ends of thinking too (s1's thinking_n_ignore).
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        ignore_ends: Option<usize>,
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        max_continuations: Option<usize>,
        #[arg(long, value_parser = ["continue", "suppress"])]
        #[serde(skip_serializing_if = "Option::is_none")]
        on_early_end: Option<String>,
        /// Tokens allowed past the cap to reach a sentence end.
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        grace_tokens: Option<usize>,
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        wrap_up: Option<String>,
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        answer_prefix: Option<String>,
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        answer_max_tokens: Option<usize>,
        #[arg(long)]
        #[serde(rename = "start", skip_serializing_if = "Option::is_none")]
        think_start: Option<String>,
        #[arg(long)]
        #[serde(rename = "end", skip_serializing_if = "Option::is_none")]
        think_end: Option<String>,
        /// Open thinking at the start of the response (for templates that do not).
        #[arg(long)]
        #[serde(rename = "open", skip_serializing_if = "std::ops::Not::not")]
        think_open: bool,
        /// Mask end of generation in the answer until it holds N tokens.
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        answer_min_tokens: Option<usize>,
        /// Mask these words (and their case / leading-space forms) while thinking (repeatable).
        #[arg(long)]
        #[serde(skip_serializing_if = "Vec::is_empty")]
        suppress: Vec<String>,
        /// A preset: s1, qwen3, nowait, deer, alphaone (see the README); flags override it.
        #[arg(long, value_parser = ["s1", "qwen3", "nowait", "deer", "alphaone"])]
        #[serde(skip)]
        policy: Option<String>,
        /// Thinking options as JSON (every field of ThinkingOptions: confidence_exit,
        /// schedule, thinking_sampling, ...), over the preset and under the flags.
        #[arg(long, value_parser = json_object)]
        #[serde(skip)]
        thinking: Option<serde_json::Map<String, serde_json::Value>>,
    }

    impl ThinkingArgs {
        /// `None` when no thinking flag was given: no budget control at all. Otherwise the
        /// layers, each over the one before: the preset (`--policy`), `--thinking` JSON, the
        /// flags.
        fn options(&self) -> Result<Option<ThinkingOptions>, EngineError> {
            let mut fields = serde_json::Map::new();
            if let Some(policy) = &self.policy {
                fields.insert("preset".into(), policy.clone().into());
            }
            if let Some(json) = &self.thinking {
                fields.extend(json.clone());
            }
            match serde_json::to_value(self) {
                Ok(serde_json::Value::Object(flags)) => fields.extend(flags),
                other => return Err(EngineError::InvalidOptions(format!("thinking flags: {other:?}"))),
            }
            if fields.is_empty() {
                return Ok(None);
            }
            thinking_options(fields).map(Some)
        }
    }

    /// Thinking options from JSON fields (a `preset` among them goes underneath the rest).
    fn thinking_options(fields: serde_json::Map<String, serde_json::Value>) -> Result<ThinkingOptions, EngineError> {
        let options: ThinkingOptions = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| EngineError::InvalidOptions(format!("thinking: {e}")))?;
        options.validate().map_err(|e| EngineError::InvalidOptions(e.to_string()))?;
        Ok(options)
    }

    fn json_object(json: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        serde_json::from_str(json).map_err(|e| format!("not a JSON object: {e}"))
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
        /// Tokens already in the KV cache (run untimed) before the timed prefill and decode.
        #[arg(long, default_value_t = 0)]
        context: usize,
        /// Who computes the context's keys and values: the measured backend itself (a
        /// prefill), or the CPU backend, whose cache is then copied into the GPU's (the same
        /// model, rounded to the same f16; decode cost does not depend on the values). A
        /// software adapter prefills a few tokens a second: 4k positions would take an hour.
        #[arg(long, value_enum, default_value = "self")]
        context_fill: ContextFillArg,
        /// 0: greedy decode (argmax on the backend); > 0: decode through the real sampler
        /// (on the device where the backend samples itself).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0.0)]
        min_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The device's memory bandwidth in GB/s: also print the fraction of the memory
        /// bound (weight and KV bytes per token ÷ bandwidth) that decode reached.
        #[arg(long)]
        bandwidth_gbs: Option<f64>,
        /// Run a decode step ahead of the host's reading of the previous token (the GPU
        /// backend's run-ahead; auto: as in generation, on GPUs and off on CPU adapters).
        #[arg(long, value_enum, default_value = "auto")]
        run_ahead: RunAheadArg,
        /// GPU: time every decode dispatch with timestamp queries and report the time per
        /// kernel entry point (`gpu_kernels`). Each dispatch then runs in a pass of its own
        /// and every step waits for its timestamps, so tok/s under it is not a speed figure.
        #[arg(long)]
        profile: bool,
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let result = match cli.command {
            Command::Generate(a) => generate(a),
            Command::Score(a) => score(a),
            Command::Bench(a) => bench(a),
            Command::Eval(a) => run_eval(a),
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
        let cpu_kernels = match args.cpu_kernels {
            CpuKernelsArg::Int8 => CpuKernels::Int8,
            CpuKernelsArg::F32 => CpuKernels::F32,
        };
        LoadOptions { backend, max_context: args.max_context, cpu_kernels }
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
        block_on(gguf_loader(args, &options)?.finish(tokenizer))
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
            thinking: a.thinking.options()?,
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

    fn labelled_policy(spec: &str) -> Result<(String, serde_json::Map<String, serde_json::Value>), String> {
        let (label, json) = spec.split_once('=').ok_or("expected LABEL=JSON")?;
        Ok((label.to_string(), json_object(json)?))
    }

    fn run_eval(a: EvalArgs) -> Result<(), EngineError> {
        // Presets by name, then the labelled ones.
        let mut policies = a.policies.iter().map(|name| eval::Policy::preset(name)).collect::<Result<Vec<_>, _>>()?;
        policies.extend(a.policy.iter().map(|(label, fields)| eval::Policy { label: label.clone(), fields: fields.clone() }));
        let sweep = eval::Sweep {
            seed: a.seed,
            problems: a.problems,
            policies,
            budgets: a.budgets.clone(),
            floor: a.floor,
            thinking: a.thinking.clone(),
        };
        let plan = sweep.plan()?;
        let mut results = Vec::new();
        for path in &a.model {
            let args = ModelArgs {
                model: path.clone(),
                tokenizer: None,
                backend: a.backend,
                threads: a.threads,
                max_context: a.max_context,
                cpu_kernels: CpuKernelsArg::F32,
            };
            let mut engine = load(&args)?;
            let model = path.file_name().map_or(path.display().to_string(), |f| f.to_string_lossy().into_owned());
            for run in &plan {
                let r = block_on(eval::run_item(&mut engine, &model, run))?;
                eprintln!(
                    "{model} {} budget {} #{}: thinking {} answer {:?} expected {} {}",
                    run.policy,
                    run.budget,
                    run.problem.id,
                    r.thinking_tokens,
                    r.predicted,
                    r.expected,
                    if r.correct { "ok" } else { "wrong" }
                );
                results.push(r);
            }
        }
        let problems = eval::problems(a.seed, a.problems);
        let summaries = eval::summarize(&results);
        if a.json {
            let json = serde_json::json!({ "problems": problems, "results": results, "summaries": summaries });
            println!("{json}");
        } else if a.csv {
            print!("{}", eval::render_csv(&results));
        } else {
            print!("{}", eval::render_tables(&summaries));
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
        // The backend alone: fixed synthetic ids, no tokenizer.
        let t0 = std::time::Instant::now();
        let load = |options: &LoadOptions| -> Result<AnyBackend, EngineError> {
            Ok(if a.model.model.is_dir() {
                block_on(AnyBackend::new(loader::load_safetensors_dir(&a.model.model)?, options))?
            } else {
                block_on(gguf_loader(&a.model, options)?.finish_backend())?.0
            })
        };
        let mut backend = load(&load_options(&a.model))?;
        let load_s = t0.elapsed().as_secs_f64();
        if let AnyBackend::Gpu(m) = &mut backend {
            match a.run_ahead {
                RunAheadArg::Auto => {}
                RunAheadArg::On => m.set_run_ahead(true),
                RunAheadArg::Off => m.set_run_ahead(false),
            }
            if a.profile && !m.context().enable_profiling() {
                eprintln!("--profile: this adapter has no timestamp queries; no kernel times");
            }
        }
        let kernel_times = |b: &AnyBackend| match b {
            AnyBackend::Gpu(m) => m.context().take_kernel_times(),
            AnyBackend::Cpu { .. } => Vec::new(),
        };
        let vocab = backend.config().vocab_size as u32;
        let prompt: Vec<u32> = (0..a.prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let context: Vec<u32> = (0..a.context as u32).map(|i| (i * 104_729 + 7) % vocab).collect();
        // --context-fill cpu: the context's cache, computed once by the CPU backend.
        let context_kv = match (&backend, a.context_fill) {
            (AnyBackend::Gpu(_), ContextFillArg::Cpu) if !context.is_empty() => {
                let mut cpu = load(&LoadOptions { backend: BackendChoice::Cpu, ..load_options(&a.model) })?;
                block_on(cpu.forward_greedy(&context, &[]))?;
                match cpu {
                    AnyBackend::Cpu { model, .. } => Some(model.kv_rows()),
                    AnyBackend::Gpu(_) => None,
                }
            }
            _ => None,
        };
        let options = SamplerOptions {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: a.seed,
            ..SamplerOptions::default()
        };
        options.validate().map_err(|e| EngineError::Generate(e.into()))?;
        // Counters of the GPU context (dispatches, bytes read back), where there is one.
        let counters = |b: &AnyBackend| match b {
            AnyBackend::Gpu(m) => Some((m.context().dispatches.get(), m.context().readback_bytes.get())),
            AnyBackend::Cpu { .. } => None,
        };
        // One round: the context untimed, then the prompt's prefill, then decode steps:
        // greedy (argmax on the backend) or sampled with the real sampler, on the backend
        // when it samples itself, else from logits on the host, as generation does.
        type Round = (f64, Vec<f64>, Option<(u64, u64)>, Vec<pensive::gpu::KernelTime>);
        let mut round = || -> Result<Round, EngineError> {
            backend.truncate(0)?;
            let mut sampler = Sampler::new(options.clone()).map_err(|e| EngineError::Generate(e.into()))?;
            let mut history = context.clone();
            history.extend_from_slice(&prompt);
            match (&mut backend, &context_kv) {
                _ if context.is_empty() => {}
                (AnyBackend::Gpu(m), Some(kv)) => {
                    m.import_kv(kv, context.len())?;
                    // The copy has reached the device before the clock starts.
                    let ctx = m.context();
                    ctx.queue.submit([]);
                    let _ = ctx.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None });
                }
                // A read-back step (4 bytes): a GPU has finished the context before the clock
                // starts, where a prefill without logits would still be running.
                _ => {
                    block_on(backend.forward_greedy(&context, &[]))?;
                }
            }
            let mut step = |backend: &mut AnyBackend, tokens: &[u32], history: &[u32], last: bool| -> Result<u32, EngineError> {
                let u = sampler.next_uniform();
                // As generation: the next step may run ahead unless this is the last one.
                let ahead = (!last).then(|| sampler.peek_uniform());
                let request = SampleRequest { options: &options, history, banned: &[], uniform: u, raw_argmax: false, ahead };
                let id = match block_on(backend.forward_sample(tokens, &request)) {
                    Some(r) => r?.id,
                    None if options.temperature == 0.0 => Some(block_on(backend.forward_greedy(tokens, &[]))?),
                    None => {
                        let logits = block_on(backend.forward(tokens, 1))?;
                        Some(sample_with_uniform(&options, &logits, history, &[], u).map_err(|e| EngineError::Generate(e.into()))?)
                    }
                };
                id.ok_or(EngineError::Generate(SamplerError::NoCandidates.into()))
            };
            let t = std::time::Instant::now();
            let mut next = step(&mut backend, &prompt, &history, a.gen_tokens == 0)?;
            let prefill_s = t.elapsed().as_secs_f64();
            let before = counters(&backend);
            kernel_times(&backend); // the decode steps' only
            let mut steps = Vec::with_capacity(a.gen_tokens);
            for i in 0..a.gen_tokens {
                history.push(next);
                let t = std::time::Instant::now();
                next = step(&mut backend, &[next], &history, i + 1 == a.gen_tokens)?;
                steps.push(t.elapsed().as_secs_f64());
            }
            let after = counters(&backend);
            let counted = before.zip(after).map(|((d0, r0), (d1, r1))| (d1 - d0, r1 - r0));
            Ok((prefill_s, steps, counted, kernel_times(&backend)))
        };
        if a.repeats > 1 {
            round()?; // warm-up: first-use costs (pipeline compilation, page faults)
        }
        let mut best: Option<Round> = None;
        for _ in 0..a.repeats.max(1) {
            let (p, steps, counted, kernels) = round()?;
            best = Some(match best {
                None => (p, steps, counted, kernels),
                Some((bp, bs, bc, bk)) => {
                    let (s, c, k) =
                        if steps.iter().sum::<f64>() < bs.iter().sum::<f64>() { (steps, counted, kernels) } else { (bs, bc, bk) };
                    (bp.min(p), s, c, k)
                }
            });
        }
        let (prefill_s, mut steps, counted, kernels) = best.unwrap_or_default();
        let decode_s: f64 = steps.iter().sum();
        steps.sort_by(|x, y| x.total_cmp(y));
        let median = steps.get(steps.len() / 2).copied().unwrap_or(0.0);
        let per_token = |n: u64| n as f64 / a.gen_tokens.max(1) as f64;
        // What a decode step must read: the weights, and the KV cache of every position
        // before it (on average over the decode steps).
        let (weight_bytes, kv_bytes) = match &backend {
            AnyBackend::Gpu(m) => {
                let mean_len = (a.context + a.prompt_tokens) as f64 + (a.gen_tokens as f64 + 1.0) / 2.0;
                (Some(m.decode_weight_bytes() as f64), Some(m.kv_bytes_per_position() as f64 * mean_len))
            }
            AnyBackend::Cpu { .. } => (None, None),
        };
        let step_s = decode_s / a.gen_tokens.max(1) as f64;
        let bound_fraction = a.bandwidth_gbs.zip(weight_bytes.zip(kv_bytes)).map(|(gbs, (w, kv))| (w + kv) / step_s / (gbs * 1e9));
        let json = serde_json::json!({
            "model": a.model.model.display().to_string(),
            "backend": backend.name(),
            "fallback_reason": backend.fallback_reason(),
            // The adapter and the kernel shapes chosen for it (lanes, subgroups, 16-byte words).
            "gpu_adapter": match &backend {
                AnyBackend::Gpu(m) => Some(m.context().describe()),
                AnyBackend::Cpu { .. } => None,
            },
            "load_s": load_s,
            "context": a.context,
            // Who computed the context's cache: the measured backend, or the CPU's copied in.
            "context_fill": if context_kv.is_some() { "cpu" } else { "self" },
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "repeats": a.repeats,
            "temperature": a.temperature,
            "top_k": a.top_k,
            "top_p": a.top_p,
            "min_p": a.min_p,
            "prefill_s": prefill_s,
            "prefill_tok_s": a.prompt_tokens as f64 / prefill_s,
            "decode_s": decode_s,
            "decode_tok_s": a.gen_tokens as f64 / decode_s,
            "decode_step_ms_median": median * 1e3,
            "dispatches_per_token": counted.map(|(d, _)| per_token(d)),
            "readback_bytes_per_token": counted.map(|(_, r)| per_token(r)),
            "weight_bytes_per_token": weight_bytes,
            "kv_bytes_per_token": kv_bytes,
            "bandwidth_gbs": a.bandwidth_gbs,
            "memory_bound_fraction": bound_fraction,
            "peak_rss_mb": peak_rss_mb(),
            "gpu_kernels": (!kernels.is_empty()).then(|| {
                kernels
                    .iter()
                    .map(|k| serde_json::json!({ "entry": k.entry, "ms_per_token": k.ms / a.gen_tokens.max(1) as f64, "dispatches_per_token": per_token(k.dispatches) }))
                    .collect::<Vec<_>>()
            }),
            "run_ahead": match &backend {
                AnyBackend::Gpu(m) => serde_json::json!({ "on": m.run_ahead(), "claimed": m.ahead_stats().claimed, "dropped": m.ahead_stats().dropped }),
                AnyBackend::Cpu { .. } => serde_json::Value::Null,
            },
        });
        println!("{json}");
        if let Some(f) = bound_fraction {
            eprintln!("decode reached {:.1} % of the memory bound at {} GB/s", f * 100.0, a.bandwidth_gbs.unwrap_or(0.0));
        }
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
