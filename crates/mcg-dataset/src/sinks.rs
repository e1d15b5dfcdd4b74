//! Forming images batch by batch while a second thread writes the previous batch.

use anyhow::{Result, ensure};
use mcg_formats::mrc::MrcStackWriter;
use mcg_h5::H5Writer;
use ndarray::{Array3, ArrayView3, ArrayViewMut3, s};

/// Where finished images go, in order.
#[derive(Debug)]
pub struct Sinks {
    /// The MRC stack.
    pub mrc: MrcStackWriter,
    /// The HDF5 container, when one is written, with the number of images written so far.
    pub h5: Option<(H5Writer, usize)>,
}

impl Sinks {
    fn append(&mut self, images: ArrayView3<'_, f32>) -> Result<()> {
        self.mrc.append(images)?;
        if let Some((h5, done)) = &mut self.h5 {
            h5.write_images(*done, images)?;
            *done += images.dim().0;
        }
        Ok(())
    }
}

/// Forms `count` images of `n_box`² pixels, `batch` at a time, with `form(first, out)` (`out`
/// holds the images `first..first + out.len()`), while a second thread appends the previous
/// batch to `sinks`. Two batch buffers circulate, so memory stays flat in the number of images.
/// Stops early with an error on Ctrl-C (the unfinished writers are dropped, which removes their
/// temporary files). Returns the sinks with every image written, for the caller to finish.
pub fn write_overlapped(
    sinks: Sinks,
    count: usize,
    batch: usize,
    n_box: usize,
    progress: &dyn crate::monitor::Monitor,
    mut form: impl FnMut(usize, ArrayViewMut3<'_, f32>) -> Result<()>,
) -> Result<Sinks> {
    use std::sync::mpsc::sync_channel;
    ensure!(batch > 0, "--batch must be at least 1");
    let (full_tx, full_rx) = sync_channel::<(Array3<f32>, usize)>(1);
    let (free_tx, free_rx) = sync_channel::<Array3<f32>>(2);
    let size = batch.min(count).max(1);
    for _ in 0..2 {
        free_tx
            .send(Array3::zeros((size, n_box, n_box)))
            .expect("room for two buffers");
    }
    let mut sinks = sinks;
    let write_thread = std::thread::spawn(move || -> Result<Sinks> {
        for (buffer, len) in full_rx {
            sinks.append(buffer.slice(s![..len, .., ..]))?;
            // The former may already have stopped; then the buffer is simply dropped.
            let _ = free_tx.send(buffer);
        }
        Ok(sinks)
    });
    let mut stopped = Ok(());
    let mut first = 0;
    while first < count {
        if let Err(e) = progress.check_cancelled() {
            stopped = Err(e);
            break;
        }
        let Ok(mut buffer) = free_rx.recv() else {
            break;
        };
        let len = batch.min(count - first);
        if let Err(e) = form(first, buffer.slice_mut(s![..len, .., ..])) {
            stopped = Err(e);
            break;
        }
        if full_tx.send((buffer, len)).is_err() {
            break; // The writer failed; its error is reported below.
        }
        first += len;
    }
    drop(full_tx);
    let sinks = write_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the writing thread panicked"))??;
    stopped?;
    ensure!(
        sinks.mrc.len() == count,
        "wrote {} of {count} images",
        sinks.mrc.len()
    );
    Ok(sinks)
}
