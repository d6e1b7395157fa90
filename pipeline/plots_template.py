"""The offline HTML template of `dvc plots show` / `dvc plots diff`.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. The project
points `plots.html_template` (in `.dvc/config`) at a page that carries the three libraries inline: the
bundle vl-convert-python ships (`vl_convert.javascript_bundle`, ~0.9 MB), so nothing is fetched. The
page is generated, not committed (`make setup`, or `ijepa plots-template`), and is gitignored.

The template has no `{scripts}` placeholder (where DVC would put its CDN `<script src>` tags), only
`{plot_divs}` (DVC's `vegaEmbed('#id', spec)` calls) and `{refresh_tag}`. Its `vegaEmbed` draws SVG
(elements a test can count) and hides the "Open in Vega Editor" action, which needs the network.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic import write_text_atomic

PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

# ES module snippet for vl-convert's bundler: `vegaEmbed`, `vegaLite` and `vega` are its imports.
SNIPPET = """
window.vega = vega;
window.vegaLite = vegaLite;
window.vegaEmbed = function (el, spec, opt) {
  var defaults = {renderer: "svg", actions: {export: true, source: true, compiled: true, editor: false}};
  return vegaEmbed(el, spec, Object.assign(defaults, opt || {}));
};
"""

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots (offline)</title>
    <!-- vega __VEGA__, vega-lite __VEGA_LITE__, vega-embed __VEGA_EMBED__ inline (vl-convert-python); no CDN -->
    <script type="text/javascript">
__BUNDLE__
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
        .vega-embed { margin: 12px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


class PlotsTemplateError(RuntimeError):
    """`.dvc/config` names no `plots.html_template`, or the bundle cannot be inlined safely."""


def template_path(root: Path | str = ".") -> Path:
    """Where DVC reads the template from: `plots.html_template` of the repo's merged DVC config,
    relative to `.dvc/` as DVC resolves it."""
    from dvc.config import Config

    dvc_dir = Path(root) / ".dvc"
    value = Config(dvc_dir=str(dvc_dir))["plots"].get("html_template")
    if not value:
        raise PlotsTemplateError(f"{dvc_dir / 'config'}: no plots.html_template set (expected e.g. "
                                 "`dvc config plots.html_template plots_offline.html`)")  # fmt: skip
    path = Path(value)
    return path if path.is_absolute() else dvc_dir / path


def _newest_v5(versions: list[str]) -> str:
    """DVC's plot templates declare Vega-Lite v5: the newest 5.x vl-convert ships."""
    fives = [v for v in versions if v.split(".")[0] == "5"]
    if not fives:
        raise PlotsTemplateError(f"vl-convert ships no Vega-Lite 5.x (has {versions}); DVC's templates need v5")
    return max(fives, key=lambda v: tuple(int(p) for p in v.split(".")))


def build_template() -> str:
    """The page: DVC's placeholders around the inlined vega/vega-lite/vega-embed bundle."""
    import vl_convert

    vl_version = _newest_v5(list(vl_convert.get_vegalite_versions()))
    bundle = vl_convert.javascript_bundle(SNIPPET, vl_version=vl_version)
    clash = [p for p in PLACEHOLDERS if p in bundle]
    if clash:
        raise PlotsTemplateError(f"the JavaScript bundle contains DVC placeholder(s) {clash}; DVC would replace them")
    bundle = bundle.replace("</script", "<\\/script")  # a literal end tag inside the code would end the element
    return (
        PAGE.replace("__VEGA__", vl_convert.get_vega_version())
        .replace("__VEGA_LITE__", vl_version)
        .replace("__VEGA_EMBED__", vl_convert.get_vega_embed_version())
        .replace("__BUNDLE__", bundle)
    )


def write_template(root: Path | str = ".", path: Path | str | None = None) -> Path:
    """Write the template where `.dvc/config` says (or to `path`), atomically; returns the path."""
    target = Path(path) if path is not None else template_path(root)
    write_text_atomic(target, build_template())
    return target
