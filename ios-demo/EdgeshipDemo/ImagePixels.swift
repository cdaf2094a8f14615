import CoreGraphics
import UIKit

enum ImagePixels {
    /// The image drawn (upright, bilinear/high quality) into width x height RGBA8 pixels, row-major.
    static func rgba(_ image: UIImage, width: Int, height: Int) -> [UInt8]? {
        let upright = UIGraphicsImageRenderer(size: image.size, format: {
            let f = UIGraphicsImageRendererFormat.default()
            f.scale = 1
            return f
        }()).image { _ in image.draw(at: .zero) }
        guard let cg = upright.cgImage else { return nil }
        var pixels = [UInt8](repeating: 0, count: width * height * 4)
        let drawn: Bool = pixels.withUnsafeMutableBytes { buffer in
            guard let ctx = CGContext(data: buffer.baseAddress, width: width, height: height, bitsPerComponent: 8,
                                      bytesPerRow: width * 4, space: CGColorSpaceCreateDeviceRGB(),
                                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            ctx.interpolationQuality = .high
            ctx.draw(cg, in: CGRect(x: 0, y: 0, width: width, height: height))
            return true
        }
        return drawn ? pixels : nil
    }
}
