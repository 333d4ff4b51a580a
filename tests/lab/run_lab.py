"""Run notebooks the way a researcher does: JupyterLab in headless Chromium, Run > Run All Cells, read the outputs.

    python tests/lab/run_lab.py --out _lab nbs/02_nets.ipynb nbs/papers/toy/energy_landscapes.ipynb

Starts JupyterLab on 127.0.0.1 (a free port, a random token) serving a copy of the checkout's files in a
temporary folder, so autosave or a stray Ctrl+S cannot touch the checkout. Chromium may reach loopback only.
For each notebook: open it, run all cells from the Run menu, wait until the kernel is idle and no cell is
queued, then fail on any error output, any traceback on stderr, or tqdm's "IProgress not found" warning.
A screenshot of each whole notebook goes to --out. The server, its kernels and the browser
are stopped on success, on failure and on Ctrl+C. Needs selenium (`pip install -e '.[lab]'`), chromium and
chromedriver (Debian: `apt-get install chromium chromium-driver`). Exit status 0 when every notebook passed.
"""
import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Settings of the test's own JupyterLab: all cells in the DOM, no autosave, no news feed or update check;
# the server (config below) fetches no news, checks no updates and asks PyPI nothing.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}
SERVER_CONFIG = {
    "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
               "extension_manager": "readonly"},  # no PyPI look-ups from the extension manager
    "ServerApp": {"open_browser": False, "allow_remote_access": False},
}
# Cells' outputs that fail the run: errors, tracebacks printed to stderr, tqdm falling back to text bars.
CHECK_OUTPUTS_JS = """
const cells = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')];
const out = {cells: cells.length, code: 0, unrun: 0, running: 0, bad: []};
cells.forEach((cell, i) => {
  if (!cell.classList.contains('jp-CodeCell')) return;
  out.code += 1;
  const prompt = (cell.querySelector('.jp-InputPrompt') || {}).textContent || '';
  if (prompt.includes('*')) out.running += 1;
  else if (!/\\d/.test(prompt)) out.unrun += 1;
  cell.querySelectorAll('.jp-OutputArea-output').forEach(o => {
    const mime = o.getAttribute('data-mime-type') || '';
    const text = o.textContent || '';
    if (mime === 'application/vnd.jupyter.stderr' &&
        (text.includes('Traceback') || text.includes('IProgress not found')))
      out.bad.push({cell: i + 1, text: text.slice(0, 3000)});
  });
});
return out;
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_checkout(dst: Path) -> Path:
    "The checkout's tracked and untracked-but-not-ignored files (working-tree state) copied to `dst`."
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    for f in (f for f in out.split("\0") if f and (ROOT / f).is_file()):
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    return dst


def api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


class Lab:
    "A JupyterLab server on 127.0.0.1 serving `root`, with its own config, settings and runtime folders in `tmp`."

    def __init__(self, root: Path, tmp: Path, log: Path):
        self.port, self.token = free_port(), secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "jupyter_config"
        (cfg / "labconfig").mkdir(parents=True)
        (cfg / "labconfig" / "default_setting_overrides.json").write_text(json.dumps(LAB_SETTINGS))
        (cfg / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG))
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(cfg), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
               "JUPYTER_DATA_DIR": str(tmp / "data"),
               "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
               "PYTHONPATH": str(root), "EBM_NB_DATA": os.environ.get("EBM_NB_DATA") or str(ROOT / "data")}
        env.pop("MPLBACKEND", None)
        env.pop("EBM_NB_QUIET", None)  # progress bars on, as for a researcher
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--port-retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}"]
        if os.getuid() == 0: cmd.append("--allow-root")
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with status {self.proc.returncode}; see {self.log.name}")
            try:
                api(self.base, self.token, "/api/status")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer on {self.base} within {timeout:.0f} s; see {self.log.name}")

    def stop(self):
        "Ask the server to shut down (it stops its kernels); terminate, then kill, if it does not."
        if self.proc.poll() is None:
            try: api(self.base, self.token, "/api/shutdown", method="POST")
            except OSError: pass
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try: self.proc.wait(10)
                except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait()
        self.log.close()


def browser(width: int = 1400, height: int = 1000):
    "Headless Chromium through Debian's chromedriver, allowed to resolve 127.0.0.1 only."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", f"--window-size={width},{height}", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
              "--disable-client-side-phishing-detection", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
              "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"):
        opts.add_argument(a)
    if os.getuid() == 0: opts.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=opts, service=service)


def click_menu(driver, menu: str, item: str, timeout: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(driver, timeout)
    wait.until(EC.element_to_be_clickable(
        (By.XPATH, f"//li[contains(@class,'lm-MenuBar-item')][.//div[normalize-space()='{menu}']]"))).click()
    wait.until(EC.element_to_be_clickable(
        (By.XPATH, f"//li[contains(@class,'lm-Menu-item')][.//div[contains(@class,'lm-Menu-itemLabel')]"
                   f"[normalize-space()='{item}']]"))).click()


def screenshot(driver, path: Path, width: int = 1400, max_height: int = 16000):
    "Save a screenshot of the whole notebook: grow the window to the notebook's height, then shrink it back."
    height = driver.execute_script("""
      const p = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
      return p ? p.scrollHeight - p.clientHeight + window.innerHeight : window.innerHeight;""")
    size = driver.get_window_size()
    driver.set_window_size(width, min(max_height, int(height) + 200))
    time.sleep(1)
    driver.execute_script("""
      const p = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
      if (p) p.scrollTop = 0;""")
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])


def session_kernel(lab: Lab, rel: str):
    "The kernel id of the session JupyterLab opened for notebook `rel`, or None while there is none."
    return next((s["kernel"]["id"] for s in api(lab.base, lab.token, "/api/sessions")
                 if s.get("path") == rel and s.get("kernel")), None)


def run_notebook(lab: Lab, rel: str, out: Path, timeout: float, workspace: str) -> dict:
    "Open `rel` (relative to the served root) in a fresh browser and workspace, run all cells, check the outputs."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    stem = Path(rel).stem
    driver = browser()
    try:
        driver.get(f"{lab.base}/lab/workspaces/{workspace}/tree/{rel}?token={lab.token}")
        wait = WebDriverWait(driver, 120)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell")))
        kernel = wait.until(lambda d: session_kernel(lab, rel))
        state = lambda: api(lab.base, lab.token, f"/api/kernels/{kernel}")["execution_state"]
        wait.until(lambda d: state() == "idle")
        t0 = time.time()
        click_menu(driver, "Run", "Run All Cells")
        res = {}
        while time.time() - t0 < timeout:
            time.sleep(2)
            res = driver.execute_script(CHECK_OUTPUTS_JS)
            if res["running"] == 0 and state() == "idle":
                time.sleep(2)  # outputs still on their way, or the next queued cell about to start
                res = driver.execute_script(CHECK_OUTPUTS_JS)
                if res["running"] == 0 and state() == "idle": break
        else:
            res["timeout"] = True
        res["seconds"] = round(time.time() - t0, 1)
        screenshot(driver, out / f"{stem}.png")
        return res
    finally:
        driver.quit()
        # Close the notebook without saving it, and stop its kernel, so the next notebook runs alone.
        for s in api(lab.base, lab.token, "/api/sessions"):
            api(lab.base, lab.token, f"/api/sessions/{s['id']}", method="DELETE")


def check_settings(lab: Lab):
    "Fail early unless the test's settings became JupyterLab's defaults (the checks read all cells from the DOM)."
    for plugin, want in LAB_SETTINGS.items():
        props = api(lab.base, lab.token, f"/lab/api/settings/{plugin}")["schema"]["properties"]
        wrong = {k: props.get(k, {}).get("default") for k, v in want.items() if props.get(k, {}).get("default") != v}
        if wrong: raise RuntimeError(f"JupyterLab ignored the test's settings for {plugin}: {wrong}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+", help="notebook paths relative to the checkout")
    ap.add_argument("--out", default="_lab", help="folder for screenshots and the server log (default _lab)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for one notebook's Run All")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for nb in args.notebooks:
        if not (ROOT / nb).is_file(): ap.error(f"{nb} is not a file of the checkout {ROOT}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks on `kill` too
    t_start, failed = time.time(), []
    with tempfile.TemporaryDirectory(prefix="ebm_nb_lab_") as tmp:
        tmp = Path(tmp)
        checkout = copy_checkout(tmp / "checkout")
        lab = Lab(checkout, tmp, out / "jupyter.log")
        try:
            lab.wait_ready()
            check_settings(lab)
            print(f"JupyterLab on {lab.base} (token hidden), serving a copy of the checkout in {checkout}")
            for i, nb in enumerate(args.notebooks):
                res = run_notebook(lab, nb, out, args.timeout, workspace=f"test-lab-{i}")
                problems = [f"cell {b['cell']}: {b['text']}" for b in res["bad"]]
                if res.get("timeout"): problems.append(f"still running after {args.timeout:.0f} s")
                if res["unrun"]: problems.append(f"{res['unrun']} of {res['code']} code cells did not run")
                status = "FAILED" if problems else "ok"
                print(f"{status:6} {nb}: {res['code']} code cells in {res['seconds']} s; "
                      f"screenshot {out / Path(nb).stem}.png")
                for p in problems: print("   ", p.replace("\n", "\n    "))
                if problems: failed.append(nb)
        finally:
            lab.stop()
    print(f"{len(args.notebooks) - len(failed)} of {len(args.notebooks)} notebooks passed in JupyterLab "
          f"in {time.time() - t_start:.0f} s; server log {out / 'jupyter.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
