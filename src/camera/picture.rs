//! Whether a camera frame may be kept as a picture in history: at most
//! [`MAX_PICTURE_BYTES`], and a JPEG that decodes (jpeg-decoder reads every scan) to a size a
//! printer camera sends. Pure: bytes in, a verdict out; nothing read from a camera can panic
//! here.

/// Largest picture kept with a tap or a finished print (a P1/A1 chamber image, 1280×720, is
/// 100–300 kB; the camera client accepts frames up to 4 MB).
pub const MAX_PICTURE_BYTES: usize = 1024 * 1024;
/// Largest width or height accepted (a Bambu camera sends at most 1920×1080).
pub const MAX_PICTURE_SIDE: u16 = 2048;

/// What a checked picture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureInfo {
    pub width: u16,
    pub height: u16,
}

/// Why a frame is not kept, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PictureError {
    #[error("the picture is {0} bytes, more than the {MAX_PICTURE_BYTES} bytes kept in history")]
    TooLarge(usize),
    #[error("the picture is not a JPEG that can be read: {0}")]
    NotJpeg(String),
    #[error("the picture is {0}×{1} pixels, not a size a printer camera sends")]
    OddSize(u16, u16),
}

/// Check `jpeg` before it is stored.
pub fn check(jpeg: &[u8]) -> Result<PictureInfo, PictureError> {
    if jpeg.len() > MAX_PICTURE_BYTES {
        return Err(PictureError::TooLarge(jpeg.len()));
    }
    if !jpeg.starts_with(&[0xff, 0xd8]) || !jpeg.ends_with(&[0xff, 0xd9]) {
        return Err(PictureError::NotJpeg(
            "it does not start with FF D8 and end with FF D9".into(),
        ));
    }
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    decoder
        .read_info()
        .map_err(|e| PictureError::NotJpeg(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| PictureError::NotJpeg("no frame header".into()))?;
    let (width, height) = (info.width, info.height);
    if width == 0 || height == 0 || width > MAX_PICTURE_SIDE || height > MAX_PICTURE_SIDE {
        return Err(PictureError::OddSize(width, height));
    }
    decoder
        .decode()
        .map_err(|e| PictureError::NotJpeg(e.to_string()))?;
    Ok(PictureInfo { width, height })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u16, h: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let pixels = vec![128u8; usize::from(w) * usize::from(h) * 3];
        jpeg_encoder::Encoder::new(&mut out, 80)
            .encode(&pixels, w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    #[test]
    fn a_camera_jpeg_is_kept() {
        assert_eq!(
            check(&jpeg(320, 180)),
            Ok(PictureInfo {
                width: 320,
                height: 180
            })
        );
    }

    #[test]
    fn anything_else_is_refused_in_words() {
        let good = jpeg(64, 36);
        let too_big = {
            let mut v = good.clone();
            v.splice(2..2, vec![0u8; MAX_PICTURE_BYTES]);
            v
        };
        assert_eq!(check(&too_big), Err(PictureError::TooLarge(too_big.len())));
        let text = check(b"<html>not a picture</html>")
            .unwrap_err()
            .to_string();
        assert!(text.contains("not a JPEG"), "{text}");
        // Markers right, content cut in the middle: jpeg-decoder finds it out.
        let mut cut = good[..good.len() / 2].to_vec();
        cut.extend_from_slice(&[0xff, 0xd9]);
        assert!(
            matches!(check(&cut), Err(PictureError::NotJpeg(_))),
            "{:?}",
            check(&cut)
        );
        assert!(matches!(
            check(&[0xff, 0xd8, 0xff, 0xd9]),
            Err(PictureError::NotJpeg(_))
        ));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let good = jpeg(16, 16);
        for i in 0..good.len() {
            let mut v = good.clone();
            v[i] ^= 0x5a;
            let _ = check(&v);
            let _ = check(&good[..i]);
        }
    }
}
