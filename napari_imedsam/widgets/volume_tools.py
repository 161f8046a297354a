"""Longer actions of the Segment widget: 3-D propagation, contour tracing, uncertainty overlay and mask
export. Each runs the engine in a worker and touches layers only on the GUI thread.

Signals: ``progress(done, total)`` of a propagation (``total`` 0 when it ended), ``propagated()`` when
it ended, ``status(session, text)`` for the status line, ``selected(session, object)`` when *Next uncertain
object* chose one."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..engine.contours import object_polygons
from ..engine.history import paste_mask
from ..engine.interpolation import interpolate_between
from ..engine.propagation import PropagationSettings, propagate_volume
from ..engine.refine import refine_slice
from ..engine.review import next_to_review, rank_by_uncertainty
from ..engine.viewport import region_transform
from .context import SegmentContext
from .layers import base_data, displayed_geometry, has_plain_transform, image_hw, label_color, n_slices

NIFTI_KEYS = ("affine", "ornt", "source_shape", "zyx_shape", "display_axes")


class VolumeTools(QObject):
    progress = Signal(int, int)
    propagated = Signal()
    status = Signal(object, str)
    selected = Signal(object, object)  # (session, object) chosen by next_uncertain

    def __init__(self, ctx: SegmentContext, parent: QObject | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.uncertainty_on = False  # the widget's checkbox
        self.propagation = None  # the running propagation worker
        self.last_propagation: dict | None = None
        self.reviewed: dict[int, set[int]] = {}  # per session: uids visited by next_uncertain this round
        self._review_note: dict[int, tuple[int, str]] = {}  # per session: (uid, its rank message)
        self._unc_key = None  # (image, slice, window, model) the uncertainty overlay shows
        self.unc_timer = QTimer(self)  # debounce: scrolling through slices asks once
        self.unc_timer.setSingleShot(True)
        self.unc_timer.setInterval(200)
        self.unc_timer.timeout.connect(self.update_uncertainty)
        ctx.workers.watch_timer(self.unc_timer)

    # ---- propagation ------------------------------------------------------------------------------------
    def propagate(self, directions: tuple[int, ...] = (1, -1), limit: int | None = None,
                  settings: PropagationSettings | None = None, start_slice: int | None = None,
                  end_slice: int | None = None) -> None:
        """Carry the current object's mask through the volume (``engine.propagate_volume``: stops at the
        object's end by the calibrated rules, or fills up to a marked ``start_slice``/``end_slice``)."""
        ctx = self.ctx
        sess = self._volume_session()
        if sess is None:
            return
        obj = ctx.current_object()
        z0 = ctx.current_slice()
        if obj is None or sess.labels is None or not (np.asarray(sess.labels.data[z0]) == obj.label).any():
            ctx.notifier.warning(f"No committed mask of the current object on slice {z0}: draw a box on this "
                               "slice first (or go to the slice where the object was segmented).")
            return
        label, seed = obj.label, np.asarray(sess.labels.data[z0]) == obj.label
        settings = settings or PropagationSettings(limit=limit if limit else None)
        seg, window, volume = ctx.segmenter, ctx.current_window(), base_data(sess.image)
        if start_slice is not None and end_slice is not None and start_slice > end_slice:
            start_slice, end_slice = end_slice, start_slice
        if (start_slice is not None and z0 < start_slice) or (end_slice is not None and z0 > end_slice):
            ctx.notifier.warning(f"Propagation not started: the current slice {z0} lies outside the marked extent "
                                 f"({start_slice if start_slice is not None else '-'} to "
                                 f"{end_slice if end_slice is not None else '-'}).")
            return
        steps = propagate_volume(seg, volume, z0, seed, directions, settings, window, start_slice, end_slice)
        total = (settings.limit or n_slices(sess.image)) * len(directions)
        self._run_steps(sess, label, steps, total, f"Propagating label {label}", "Propagated")

    def interpolate(self) -> None:
        """Fill the slices between the slices that hold a mask of the current object (Slicer's fill between
        slices): each gap is segmented with boxes interpolated from both ends, as one undo step."""
        ctx = self.ctx
        sess = self._volume_session()
        if sess is None:
            return
        obj = ctx.current_object()
        labels = np.asarray(sess.labels.data) if sess.labels is not None else None
        if obj is None or labels is None:
            ctx.notifier.warning("No current object: segment it on two or more slices first.")
            return
        annotated = [z for z in range(labels.shape[0]) if (labels[z] == obj.label).any()]
        if len(annotated) < 2:
            ctx.notifier.warning(f"Interpolation needs {ctx.book.name_of(obj.label)} on at least two slices; it is on "
                               f"{len(annotated)}. Segment it on the slices that bound the gap first.")
            return
        masks = {z: labels[z] == obj.label for z in annotated}
        steps = interpolate_between(ctx.segmenter, base_data(sess.image), masks, ctx.current_window())
        gaps = sum(b - a - 1 for a, b in zip(annotated[:-1], annotated[1:]))
        self._run_steps(sess, obj.label, steps, gaps, f"Interpolating label {obj.label}", "Interpolated")

    def _volume_session(self):
        ctx = self.ctx
        sess = ctx.session()
        if sess is None or not ctx.ensure_model():
            return None
        if not sess.volume:
            ctx.notifier.warning("Propagation needs a 3-D image (a stack or CT volume); this one is 2-D.")
            return None
        if self.propagation is not None:
            ctx.notifier.warning("A propagation is already running; cancel it first.")
            return None
        return sess

    def _run_steps(self, sess, label: int, steps, total: int, desc: str, verb: str) -> None:
        """Run an engine step generator in a worker; every step is committed on the GUI thread into one undo
        group (Ctrl+Z removes the whole run; a cancelled run keeps the slices done)."""
        ctx = self.ctx
        group = uuid.uuid4().hex
        done: list[int] = []

        def work():
            return (yield from steps)

        def on_step(step) -> None:
            if not ctx.alive_layer(sess.labels):
                return
            o = sess.store.new(label, step.box, step.slice)
            index = (step.slice, slice(None), slice(None))
            new = paste_mask(np.asarray(sess.labels.data[index]), step.mask, label, replace_label=True)
            sess.history.commit(sess.labels.data, index, new, meta={"added": [o]}, group=group)
            sess.store.add([o])
            done.append(step.slice)
            sess.labels.refresh()
            self.progress.emit(len(done), total)

        def on_return(reasons) -> None:
            self.last_propagation = {"label": label, "slices": sorted(done), "reasons": reasons}
            span = f"slices {min(done)}-{max(done)}" if done else "no slice"
            why = ("; ".join(f"{'up' if d > 0 else 'down'}: {r}" for d, r in reasons.items())
                   if isinstance(reasons, dict) else str(reasons))
            ctx.notifier.info(f"{verb} {ctx.book.name_of(label)} (label {label}) to {span} ({why}).")

        def on_finish() -> None:
            self.propagation = None
            if self.last_propagation is None or self.last_propagation.get("label") != label:
                self.last_propagation = {"label": label, "slices": sorted(done), "reasons": "cancelled"}
            self.progress.emit(len(done), 0)
            self.propagated.emit()

        self.last_propagation = None
        self.progress.emit(0, total)
        self.propagation = ctx.start(work, desc=desc, total=total, on_yield=on_step, on_return=on_return,
                                     on_finish=on_finish)

    def cancel(self) -> None:
        if self.propagation is not None:
            self.propagation.quit()
            self.ctx.notifier.info("Propagation cancelled; the slices done so far are kept (Ctrl+Z undoes them).")

    # ---- contours -----------------------------------------------------------------------------------------
    def trace_contours(self, factor: int = 4) -> None:
        ctx = self.ctx
        sess = ctx.session()
        if sess is None or not ctx.ensure_model():
            return
        z = ctx.current_slice()
        objects = sess.store.on_slice(z)
        if not objects:
            ctx.notifier.warning("No objects on this slice to trace: draw a box first.")
            return
        src, hw, seg = ctx.slice_image(sess.image, z), image_hw(sess.image), ctx.segmenter

        def work():
            out = []
            for obj in objects:
                def render(region, shape, obj=obj):
                    return seg.render_prob(src, obj.box, region, shape)

                out.append((obj, object_polygons(render, obj.box, hw, factor)))
            return out

        def on_return(result) -> None:
            polys, colors, labels = [], [], []
            for obj, plist in result:
                for p in plist:
                    polys.append(p if z is None else np.column_stack([np.full(len(p), z, float), p]))
                    colors.append(label_color(sess.labels, obj.label))
                    labels.append(obj.label)
            if not polys:
                ctx.notifier.warning("The objects on this slice have no outline (empty masks).")
                return
            layer = self._contour_layer(sess)
            layer.add(polys, shape_type="polygon", edge_color=colors, face_color=[0, 0, 0, 0], edge_width=0.3)
            feats = layer.features
            feats.loc[feats.index[-len(labels):], "label"] = labels
            layer.features = feats
            ctx.notifier.info(f"Traced {len(polys)} outline(s) at {factor}x into '{layer.name}'.")

        ctx.start(work, desc=f"Tracing contours at {factor}x", on_return=on_return)

    def _contour_layer(self, sess):
        if self.ctx.alive_layer(sess.contours):
            return sess.contours
        nd = 3 if sess.volume else 2
        s = tuple(sess.image.scale[-nd:])
        t = tuple(sess.image.translate[-nd:])
        sess.contours = self.ctx.add_layer(sess, self.ctx.viewer.add_shapes, ndim=nd,
                                           name=f"{sess.image.name} contours", scale=s, translate=t,
                                           features={"label": np.zeros(0, int)})
        self.ctx.arrange(sess)
        return sess.contours

    # ---- uncertainty ----------------------------------------------------------------------------------------
    def hide_stale_uncertainty(self) -> None:
        sess = self.ctx.session()
        if sess is not None and self.ctx.alive_layer(sess.uncertainty) and sess.uncertainty.visible:
            key = self.ctx.content_key(sess, self.ctx.current_slice())
            if self._unc_key is None or (*key[:3], key[-1]) != self._unc_key:
                sess.uncertainty.visible = False

    def update_uncertainty(self) -> None:
        ctx = self.ctx
        self.hide_stale_uncertainty()
        sess = ctx.session()
        if sess is None or not self.uncertainty_on:
            if sess is not None and ctx.alive_layer(sess.uncertainty):
                sess.uncertainty.visible = False
            return
        obj = ctx.current_object()
        if obj is None or ctx.segmenter is None or not has_plain_transform(sess.image):
            return
        if not ctx.segmenter.predictor.model.config.ugs:
            ctx.notifier.warning("This model has uncertainty-guided sampling switched off: no variance to show.")
            return
        z = ctx.current_slice()
        src = ctx.slice_image(sess.image, z)
        key = ctx.content_key(sess, z)

        def on_return(result) -> None:
            var, view = result
            if key != ctx.content_key(sess, ctx.current_slice()):
                return  # stale
            scale, translate = displayed_geometry(sess.image)
            s, t = region_transform(view.region, view.out_shape, scale, translate)
            hi = float(var.max()) if var.max() > 0 else 1e-6
            if not ctx.alive_layer(sess.uncertainty):
                sess.uncertainty = ctx.add_layer(sess, ctx.viewer.add_image, var, name=f"{sess.image.name} uncertainty",
                                               colormap="inferno", blending="additive", opacity=0.8,
                                               contrast_limits=(0, hi))
                ctx.arrange(sess)
            layer = sess.uncertainty
            layer.data = var
            layer.scale, layer.translate = s, t
            layer.contrast_limits = (0.0, hi)
            layer.visible = True
            self._unc_key = (*key[:3], key[-1])
            self.status.emit(sess, f"uncertainty of label {obj.label}: max variance {var.max():.3g}")

        ctx.start(ctx.segmenter.uncertainty, src, obj.box, desc="Uncertainty (MC dropout)",
                        on_return=on_return)

    # ---- review ---------------------------------------------------------------------------------------------
    def review_note(self, sess) -> str | None:
        """The rank message of the reviewed object while it is still the current one (the status line keeps
        it in front of later messages about that object: its uncertainty, its high-resolution view)."""
        note = self._review_note.get(id(sess))
        return note[1] if note is not None and sess.current is not None and sess.current.uid == note[0] else None

    def next_uncertain(self) -> None:
        """Select the committed object (on any slice) whose mask the model is least sure of, not visited yet in
        this round; go to its slice and show its uncertainty."""
        ctx = self.ctx
        sess = ctx.session()
        if sess is None or not sess.store.objects:
            ctx.notifier.warning("No objects yet: draw boxes first, then ask for the least sure one.")
            return
        if not ctx.ensure_model():
            return
        if not ctx.segmenter.predictor.model.config.ugs:
            ctx.notifier.warning("This model has uncertainty-guided sampling switched off: it cannot rank objects.")
            return
        window = ctx.current_window()
        items = [(ctx.slice_image(sess.image, o.slice, window), o) for o in sess.store.objects]
        where = "slice" if sess.volume else "image"

        def on_return(ranked) -> None:
            obj, restarted = next_to_review(ranked, self.reviewed.setdefault(id(sess), set()))
            if obj is None:
                ctx.notifier.warning("No object could be ranked: their boxes no longer fit the image.")
                return
            if restarted:
                self.reviewed[id(sess)] = set()
            self.reviewed[id(sess)].add(obj.uid)
            score = next(sc for sc, o in ranked if o is obj)
            rank = 1 + [o for _, o in ranked].index(obj)
            on = f" on {where} {obj.slice}" if obj.slice is not None else ""
            again = " (every object was visited: a new round)" if restarted else ""
            note = (f"label {obj.label}{on}: mean variance {score:.3g}, rank {rank} of {len(ranked)} by "
                    f"uncertainty{again}")
            self._review_note[id(sess)] = (obj.uid, note)
            sess.current = obj
            self.status.emit(sess, note)
            self.selected.emit(sess, obj)

        ctx.start(rank_by_uncertainty, ctx.segmenter, items, desc="Ranking objects by uncertainty",
                  on_return=on_return)

    # ---- export -----------------------------------------------------------------------------------------
    def export(self, path: str | Path, factor: int = 1) -> None:
        """Write the masks of the selected image at ``factor`` x to ``path`` (.tif/.tiff or .nii/.nii.gz); for
        an image read from DICOM the 1x masks also go to a DICOM SEG beside it (``<name>.seg.dcm``) that
        references the source series."""
        from ..io.dicom_seg import write_labels_dicom_seg
        from ..io.export import write_labels_nifti, write_labels_tiff

        ctx = self.ctx
        sess = ctx.session()
        path = Path(path)
        if sess is None or sess.labels is None:
            ctx.notifier.warning("Nothing to export: no masks yet for this image.")
            return
        name = path.name.lower()
        nifti = name.endswith((".nii", ".nii.gz"))
        if not nifti and not name.endswith((".tif", ".tiff")):
            ctx.notifier.error(f"Cannot export to {path.name}: use a .tif/.tiff or .nii/.nii.gz file name.")
            return
        meta = dict(sess.image.metadata or {})
        if nifti and any(k not in meta for k in NIFTI_KEYS):
            ctx.notifier.error(f"'{sess.image.name}' did not come from a NIfTI/DICOM file (no affine in its "
                             "metadata): export it as TIFF instead.")
            return
        if factor > 1 and not ctx.ensure_model():
            return
        labels = np.array(sess.labels.data, copy=True)
        objects = list(sess.store.objects)
        seg, window = ctx.segmenter, ctx.current_window()
        volume = sess.volume
        spacing = [float(s) for s in sess.image.scale] if "source_format" in meta else None
        names = dict(ctx.book.names)
        dicom = meta.get("source_format") == "dicom"
        seg_path = path.with_name(path.name.split(".")[0] + ".seg.dcm") if dicom else None

        def work():
            written = write(fine_labels())
            if seg_path is not None:
                write_labels_dicom_seg(labels, meta, seg_path, names)
                return f"{written} and a DICOM SEG of the 1x masks to {seg_path}"
            return written

        def fine_labels():
            if factor == 1:
                fine = labels
            else:
                slices = [None] if not volume else range(labels.shape[0])
                parts = []
                for z in slices:
                    src = ctx.slice_image(sess.image, z, window)

                    def render(obj, region, shape, src=src):
                        return seg.render_prob(src, obj.box, region, shape, obj)

                    coarse = labels if z is None else labels[z]
                    objs = [o for o in objects if o.slice == z]
                    parts.append(refine_slice(coarse, objs, render, factor))
                fine = parts[0] if not volume else np.stack(parts)
            return fine

        def write(fine):
            if nifti:
                return write_labels_nifti(path, fine, meta, factor=factor)
            sp = None if spacing is None else [*spacing[:-2], spacing[-2] / factor, spacing[-1] / factor]
            return write_labels_tiff(path, fine, sp)

        ctx.start(work, desc=f"Exporting masks at {factor}x",
                        on_return=lambda p: ctx.notifier.info(f"Saved masks at {factor}x to {p}."),
                        on_error=lambda e: ctx.notifier.error(f"Export to {path} failed: {type(e).__name__}: {e}"))
