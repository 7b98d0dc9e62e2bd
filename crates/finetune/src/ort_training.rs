//! The one place that talks to Python: ONNX Runtime's on-device training
//! API (`onnxruntime-training-cpu` 1.19.2), which exists only inside that
//! wheel's Python extension (design brief, section 2), reached through PyO3
//! in this process.
//!
//! The surface is small on purpose:
//! - [`OrtTraining::init`]: puts the training venv's site-packages on
//!   `sys.path` (and takes any other site-packages off it), registers a bare
//!   package module for `onnxruntime.training` (its `__init__` imports torch)
//!   and imports `onnxruntime.training.api` and `.artifacts`. Once per
//!   process.
//! - [`OrtTraining::generate_artifacts`] calls `artifacts.generate_artifacts`.
//! - [`TrainingSession`]: `CheckpointState.load_checkpoint`, `Module`,
//!   `Optimizer`, `train_step` (the module called in training mode),
//!   `eval` steps, `optimizer.step`, `lazy_reset_grad`,
//!   `set_learning_rate`, `save_checkpoint`, `export_model_for_inferencing`.
//!
//! Arrays cross as NumPy arrays through the `numpy` crate: inputs are moved
//! into NumPy without a copy (`IntoPyArray` on an owned array); outputs are
//! copied out once.
//!
//! Which libpython is loaded is fixed at build time (see `build.rs` and the
//! README): PyO3 links the libpython of `PYO3_PYTHON` (or `python3`) and
//! this crate's build script adds its folder as an rpath. It must be CPython
//! 3.11, the only version the training wheel exists for; [`OrtTraining::init`]
//! checks.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{Array2, ArrayD};
use numpy::{IntoPyArray, PyReadonlyArray2, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, FinetuneError, PythonError, Result};

/// The training API release this module drives.
pub const TRAINING_API_VERSION: &str = "1.19.2";

/// The loss appended to the graph by `generate_artifacts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Softmax cross-entropy on logits, integer labels, mean over the batch.
    CrossEntropy,
}

impl Loss {
    fn python_name(self) -> &'static str {
        match self {
            Loss::CrossEntropy => "CrossEntropyLoss",
        }
    }
}

/// The optimizer model `generate_artifacts` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// AdamW with ORT's defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01).
    #[default]
    AdamW,
    /// Plain SGD.
    Sgd,
}

impl OptimizerKind {
    fn python_name(self) -> &'static str {
        match self {
            OptimizerKind::AdamW => "AdamW",
            OptimizerKind::Sgd => "SGD",
        }
    }
}

/// Session options for the training and eval sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// Intra-op threads; 0 lets ONNX Runtime choose (all cores).
    pub threads: usize,
    /// ONNX Runtime's `use_deterministic_compute`.
    pub deterministic: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { threads: 0, deterministic: true }
    }
}

/// The training and inference graph files of one set of artifacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFiles {
    pub training_model: PathBuf,
    pub eval_model: PathBuf,
    pub optimizer_model: PathBuf,
}

/// What one training or eval step returns.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// Mean loss over the batch.
    pub loss: f64,
    /// `[batch, classes]`.
    pub logits: Array2<f32>,
}

/// Proof that the embedded Python is set up; every call goes through it.
#[derive(Debug)]
pub struct OrtTraining {
    site_packages: PathBuf,
    api: Py<PyModule>,
    onnxruntime: Py<PyModule>,
    /// The bootstrap's `generate` function.
    generate: Py<PyAny>,
}

/// Run once per process with `site_packages` bound; leaves `api`,
/// `artifacts` and `onnxruntime` in its globals.
const BOOTSTRAP: &str = r#"
import sys, site, importlib.util, types
if sys.version_info[:2] != (3, 11):
    raise RuntimeError(
        "this program embeds Python %d.%d, but onnxruntime-training 1.19.2 exists for CPython 3.11 only; "
        "rebuild with PYO3_PYTHON pointing at the training venv's python (see crates/finetune/README.md)"
        % sys.version_info[:2])
if not hasattr(sys, "argv"):
    sys.argv = ["finetune"]
# Only the venv's packages: drop every other site-packages (the base
# interpreter's), then add the venv's (processing its .pth files).
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith(("site-packages", "dist-packages"))]
site.addsitedir(site_packages)
spec = importlib.util.find_spec("onnxruntime.training")
if spec is None:
    raise ImportError("onnxruntime.training is not installed in " + site_packages)
# onnxruntime.training's __init__ imports a torch-based optimiser; its api and
# artifacts submodules need no torch. A bare package in its place avoids it.
if "onnxruntime.training" not in sys.modules:
    package = types.ModuleType("onnxruntime.training")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["onnxruntime.training"] = package
import onnxruntime
onnxruntime.set_default_logger_severity(3)
import onnxruntime.training.api as api
import onnxruntime.training.artifacts as artifacts
if onnxruntime.__version__ != "1.19.2":
    raise ImportError("expected onnxruntime-training 1.19.2 in %s, found %s" % (site_packages, onnxruntime.__version__))

def generate(model_path, requires_grad, frozen_params, loss, optimizer, directory, additional_outputs):
    import os, tempfile, onnx
    # A ModelProto, not a path: given a path, onnxblock writes the whole model
    # (as temp.onnx + temp.onnx.data) into the current directory.
    model = onnx.load(model_path)
    kwargs = dict(
        requires_grad=requires_grad,
        frozen_params=frozen_params,
        loss=getattr(artifacts.LossType, loss),
        optimizer=getattr(artifacts.OptimType, optimizer),
        artifact_directory=directory,
    )
    if additional_outputs:
        kwargs["additional_output_names"] = additional_outputs
    # The gradient builder logs every graph transformer at INFO level to
    # stderr whatever the logger severity; capture stderr (fd 2) meanwhile
    # and pass on everything but ONNX Runtime's INFO and VERBOSE lines.
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            artifacts.generate_artifacts(model, **kwargs)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(True)
            kept = [l for l in lines if not (l.find(" [I:onnxruntime") >= 0 or l.find(" [V:onnxruntime") >= 0)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
"#;

static INSTANCE: OnceLock<OrtTraining> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());
static GENERATE: Mutex<()> = Mutex::new(());

impl OrtTraining {
    /// Sets up the embedded Python for the training venv (made by
    /// `runtime::ensure_training_venv`), once per process; later calls
    /// return the same instance and must name the same venv.
    pub fn init(venv: &runtime::TrainingVenv) -> Result<&'static OrtTraining> {
        Self::init_with_site_packages(&venv.site_packages)
    }

    /// [`OrtTraining::init`] given the site-packages folder directly.
    pub fn init_with_site_packages(site_packages: &Path) -> Result<&'static OrtTraining> {
        let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(instance) = INSTANCE.get() {
            return if instance.site_packages == site_packages {
                Ok(instance)
            } else {
                Err(PythonError::OtherVenv { current: instance.site_packages.clone(), asked: site_packages.to_owned() }
                    .into())
            };
        }
        if !site_packages.is_dir() {
            return Err(PythonError::NoVenv { path: site_packages.to_owned() }.into());
        }
        let site = site_packages.to_str().ok_or_else(|| PythonError::NotUtf8 { path: site_packages.to_owned() })?;
        let instance = with_python("setting up the embedded Python for onnxruntime-training", |py| {
            let globals = PyDict::new(py);
            globals.set_item("site_packages", site)?;
            let code = CString::new(BOOTSTRAP)
                .map_err(|_| pyo3::exceptions::PyValueError::new_err("the bootstrap holds a NUL byte"))?;
            py.run(&code, Some(&globals), None)?;
            // A venv whose packages were altered may leave a name unset: an
            // error naming it, not a panic.
            let global = |name: &str| -> PyResult<Bound<'_, PyAny>> {
                globals.get_item(name)?.ok_or_else(|| {
                    pyo3::exceptions::PyImportError::new_err(format!("the bootstrap did not define '{name}'"))
                })
            };
            let module = |name: &str| -> PyResult<Py<PyModule>> { Ok(global(name)?.cast_into::<PyModule>()?.unbind()) };
            Ok(OrtTraining {
                site_packages: site_packages.to_owned(),
                api: module("api")?,
                onnxruntime: module("onnxruntime")?,
                generate: global("generate")?.unbind(),
            })
        })?;
        Ok(INSTANCE.get_or_init(|| instance))
    }

    /// `onnxruntime.training.artifacts.generate_artifacts(model, requires_grad,
    /// frozen_params, loss, optimizer, artifact_directory,
    /// additional_output_names)`, the model read from `model` with
    /// `onnx.load` (under 2 GB). `directory` must exist (the function does
    /// not create it). Writes `training_model.onnx`, `eval_model.onnx`,
    /// `optimizer_model.onnx` and `checkpoint` there. One generation runs at
    /// a time in a process; ONNX Runtime's INFO lines on stderr are dropped
    /// meanwhile (other stderr output of the process is passed on after).
    #[allow(clippy::too_many_arguments)]
    pub fn generate_artifacts(
        &self,
        model: &Path,
        requires_grad: &[String],
        frozen_params: &[String],
        loss: Loss,
        optimizer: OptimizerKind,
        additional_outputs: &[String],
        directory: &Path,
    ) -> Result<ModelFiles> {
        // onnxblock keeps its model in a module-level global, so two
        // generations at once corrupt each other: one at a time per process.
        // The lock is taken before attaching to Python (never while holding
        // the interpreter), so it cannot deadlock with other Python calls.
        let _one_at_a_time = GENERATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let model = model.to_str().ok_or_else(|| PythonError::NotUtf8 { path: model.to_owned() })?;
        with_python("generating training artifacts", |py| {
            self.generate.bind(py).call1((
                model,
                requires_grad,
                frozen_params,
                loss.python_name(),
                optimizer.python_name(),
                directory,
                additional_outputs,
            ))?;
            Ok(())
        })?;
        Ok(ModelFiles {
            training_model: directory.join("training_model.onnx"),
            eval_model: directory.join("eval_model.onnx"),
            optimizer_model: directory.join("optimizer_model.onnx"),
        })
    }

    /// Opens a training session: `CheckpointState.load_checkpoint(checkpoint)`,
    /// `Module(training_model, state, eval_model)` and, if `with_optimizer`,
    /// `Optimizer(optimizer_model, module)`. A checkpoint saved with its
    /// optimizer state resumes that state (moments and step count).
    pub fn open(
        &self,
        files: &ModelFiles,
        checkpoint: &Path,
        config: SessionConfig,
        with_optimizer: bool,
    ) -> Result<TrainingSession> {
        let what = format!("opening a training session from the checkpoint {}", checkpoint.display());
        with_python(&what, |py| {
            let api = self.api.bind(py);
            let options = self.onnxruntime.bind(py).getattr("SessionOptions")?.call0()?;
            options.setattr("intra_op_num_threads", config.threads)?;
            options.setattr("inter_op_num_threads", 1)?;
            options.setattr("use_deterministic_compute", config.deterministic)?;
            options.setattr("log_severity_level", 3)?;
            let state = api.getattr("CheckpointState")?.call_method1("load_checkpoint", (checkpoint,))?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("session_options", options)?;
            let module =
                api.getattr("Module")?.call((&files.training_model, &state, &files.eval_model), Some(&kwargs))?;
            let optimizer = if with_optimizer {
                Some(api.getattr("Optimizer")?.call1((&files.optimizer_model, &module))?.unbind())
            } else {
                None
            };
            Ok(TrainingSession {
                state: state.unbind(),
                module: module.unbind(),
                optimizer,
                checkpoint_api: api.getattr("CheckpointState")?.unbind(),
            })
        })
    }
}

/// A loaded checkpoint with its training and eval models (and optimizer).
#[derive(Debug)]
pub struct TrainingSession {
    state: Py<PyAny>,
    module: Py<PyAny>,
    optimizer: Option<Py<PyAny>>,
    checkpoint_api: Py<PyAny>,
}

impl TrainingSession {
    /// One forward and backward pass in training mode (`module.train()`,
    /// then `module(inputs, labels)`); gradients accumulate until
    /// [`TrainingSession::lazy_reset_grad`]. `inputs` is moved into NumPy
    /// without a copy; it must be in standard (C) layout.
    pub fn train_step(&mut self, inputs: ArrayD<f32>, labels: Vec<i64>) -> Result<StepOutput> {
        self.step(true, inputs, labels)
    }

    /// Loss and logits in eval mode (`module.eval()`; no gradients).
    pub fn eval_step(&mut self, inputs: ArrayD<f32>, labels: Vec<i64>) -> Result<StepOutput> {
        self.step(false, inputs, labels)
    }

    fn step(&mut self, training: bool, inputs: ArrayD<f32>, labels: Vec<i64>) -> Result<StepOutput> {
        if !inputs.is_standard_layout() {
            return Err(DataError::Layout.into());
        }
        let what = if training { "train_step" } else { "eval step" };
        with_python(what, |py| {
            let module = self.module.bind(py);
            module.call_method1("train", (training,))?;
            let outputs = module.call1((inputs.into_pyarray(py), labels.into_pyarray(py)))?;
            let loss: f64 = outputs.get_item(0)?.call_method0("item")?.extract()?;
            let logits = outputs.get_item(1)?;
            let logits: PyReadonlyArray2<f32> = logits.extract()?;
            Ok(StepOutput { loss, logits: logits.as_array().to_owned() })
        })
    }

    /// `optimizer.step()`: applies the accumulated gradients.
    pub fn optimizer_step(&mut self) -> Result<()> {
        let optimizer = self.optimizer()?;
        with_python("optimizer.step", |py| {
            optimizer.bind(py).call_method0("step")?;
            Ok(())
        })
    }

    /// `module.lazy_reset_grad()`: zero the gradients before the next step.
    pub fn lazy_reset_grad(&mut self) -> Result<()> {
        with_python("lazy_reset_grad", |py| {
            self.module.bind(py).call_method0("lazy_reset_grad")?;
            Ok(())
        })
    }

    /// `optimizer.set_learning_rate(lr)`.
    pub fn set_learning_rate(&mut self, learning_rate: f64) -> Result<()> {
        let optimizer = self.optimizer()?;
        with_python("set_learning_rate", |py| {
            optimizer.bind(py).call_method1("set_learning_rate", (learning_rate,))?;
            Ok(())
        })
    }

    /// `optimizer.get_learning_rate()`.
    pub fn learning_rate(&self) -> Result<f64> {
        let optimizer = self.optimizer()?;
        with_python("get_learning_rate", |py| optimizer.bind(py).call_method0("get_learning_rate")?.extract())
    }

    /// `CheckpointState.save_checkpoint(state, path, include_optimizer_state)`:
    /// the current parameters (all of them, frozen ones included) and, if
    /// asked, the optimizer's state, so that a run resumes exactly.
    pub fn save_checkpoint(&self, path: &Path, include_optimizer_state: bool) -> Result<()> {
        with_python("save_checkpoint", |py| {
            self.checkpoint_api
                .bind(py)
                .call_method1("save_checkpoint", (self.state.bind(py), path, include_optimizer_state))?;
            Ok(())
        })
    }

    /// `module.export_model_for_inferencing(path, outputs)`: the eval graph
    /// up to `outputs`, with the current parameters as initializers.
    pub fn export_model_for_inferencing(&self, path: &Path, outputs: &[&str]) -> Result<()> {
        with_python("export_model_for_inferencing", |py| {
            let names = PyList::new(py, outputs)?;
            self.module.bind(py).call_method1("export_model_for_inferencing", (path, names))?;
            Ok(())
        })
    }

    /// The checkpoint's parameter names, each with whether it trains.
    pub fn parameters(&self) -> Result<Vec<(String, bool)>> {
        with_python("reading parameters", |py| {
            let parameters = self.state.bind(py).getattr("parameters")?;
            let mut result = Vec::new();
            for item in parameters.try_iter()? {
                let (name, parameter): (String, Bound<'_, PyAny>) = item?.extract()?;
                result.push((name, parameter.getattr("requires_grad")?.extract()?));
            }
            Ok(result)
        })
    }

    /// A parameter's current values, flattened.
    pub fn parameter(&self, name: &str) -> Result<Vec<f32>> {
        with_python("reading a parameter", |py| {
            let data = self.state.bind(py).getattr("parameters")?.get_item(name)?.getattr("data")?;
            let array: PyReadonlyArrayDyn<f32> = data.extract()?;
            Ok(array.as_array().iter().copied().collect())
        })
    }

    fn optimizer(&self) -> Result<&Py<PyAny>> {
        self.optimizer.as_ref().ok_or_else(|| PythonError::NoOptimizer.into())
    }
}

/// Runs `f` with the interpreter attached, turning a Python exception into
/// an error that names `what` and carries the traceback.
fn with_python<T>(what: &str, f: impl for<'py> FnOnce(Python<'py>) -> PyResult<T>) -> Result<T> {
    Python::attach(|py| f(py).map_err(|error| python_error(py, what, error)))
}

fn python_error(py: Python<'_>, what: &str, error: PyErr) -> FinetuneError {
    let traceback = error.traceback(py).and_then(|tb| tb.format().ok()).unwrap_or_default();
    let traceback = traceback.trim_end();
    let traceback = if traceback.is_empty() { String::new() } else { format!("\n{traceback}") };
    PythonError::Exception { what: what.to_owned(), traceback, source: error }.into()
}
